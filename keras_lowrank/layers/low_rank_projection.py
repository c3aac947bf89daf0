"""The LR layer of Sanyal et al., "Robustness via Deep Low-Rank Representations"
(arXiv 1804.07090); formulas in keras_lowrank/methods.md §1.

A virtual layer attached to a representation a (batch × m). It carries W (m × m,
held at rank r) and b (m). In the forward pass it returns a unchanged (or, on
request, its projection) and adds its losses through Keras' loss mechanism.
Keras stores row vectors, so Wᵀ(a + b) is written ``(a + b) @ W`` below; A is the
batch's matrix of rows a_i, ā their mean.

``loss="relative"`` (default): the share of the batch's spread left outside the
subspace,

    L_c = ‖(A + b) W − (A + b)‖²_F / ‖A − ā‖²_F,

which does not change when the representation is scaled (so it needs no norm loss and
one weight suits every model), weighted λ_c·min(1, t / T) at training step t: a linear
warm-up over the first T = ``warmup_steps`` steps, while the task's features form.

``loss="paper"``: the paper's absolute losses,

    projection loss  L_c = (1/n) Σ_i ‖ Wᵀ(a_i + b) − (a_i + b) ‖²
    norm loss        L_n = (1/n) Σ_i | 1 − ‖a_i‖ |

Every ``update_every`` training steps W is replaced by its best rank-r
approximation (truncated SVD).
"""

import math

import keras
from keras import ops

from keras_lowrank import _host
from keras_lowrank._tracing import row_major
from keras_lowrank._validation import check_int, check_number
from keras_lowrank.precision import float32_matmuls

_OUTPUT_MODES = ("input", "projection")
_LOSSES = ("relative", "paper")
# The relative loss's defaults (docs/benchmarks.md, "The LR layer with its defaults").
_RELATIVE_WEIGHT = 2.0
_RELATIVE_WARMUP = 500
_NO_SPREAD = 1e-6
_SVD_MODES = ("auto", "exact", "randomized")
_OVERSAMPLING = 10


@float32_matmuls()
def truncate_to_rank(matrix, rank):
    """Best rank-``rank`` approximation of a matrix (Eckart–Young, by SVD)."""
    u, s, vt = _host.svd(matrix)
    return ops.matmul(u[:, :rank] * s[:rank], vt[:rank, :])


@float32_matmuls()
def randomized_truncate_to_rank(matrix, rank, sketch, power_iterations=2, return_basis=False):
    """Rank-``rank`` approximation by a randomized range finder (Halko, Martinsson
    & Tropp 2011, Alg. 4.4): Q spans W Ω after power iterations, then the SVD of
    the small Qᵀ W = Ũ Σ Vᵀ. O(m² k) for k = sketch columns instead of O(m³); the authors
    of the LR layer likewise use an approximate SVD. Keras has no randomized SVD,
    hence this function. Its QRs and SVD are ``_host``'s: on JAX's CPU from 512 features,
    NumPy's on one BLAS thread, so that the step's following products do not share the
    CPU with LAPACK's spinning threads (1.6–1.7× a plain layer's step otherwise).

    With ``return_basis``, also V (m × k): the sketch that starts the next range finder
    of a matrix that has moved little since (a warm start; ``LowRankProjection``).
    """
    q, _ = _host.qr(ops.matmul(matrix, sketch))
    for _ in range(power_iterations):
        q, _ = _host.qr(ops.matmul(ops.transpose(matrix), q))
        q, _ = _host.qr(ops.matmul(matrix, q))
    u, s, vt = _host.svd(ops.matmul(ops.transpose(q), matrix))
    truncated = ops.matmul(ops.matmul(q, u[:, :rank]) * s[:rank], vt[:rank, :])
    return (truncated, ops.transpose(vt)) if return_basis else truncated


@keras.saving.register_keras_serializable(package="keras_lowrank")
class LowRankProjection(keras.layers.Layer):
    """Pushes the representation it is attached to into a rank-``rank`` subspace.

    Args:
        rank: target rank r of W, 1 ≤ r ≤ m (m = feature size).
        projection_weight: λ_c, weight of the projection loss (≥ 0). Default
            (None): 2 with ``loss="relative"``, 1 (the paper's) with ``"paper"``.
        norm_weight: λ_n, weight of the paper's norm loss (≥ 0). Default (None):
            0 with ``loss="relative"``, which needs none, 1 with ``loss="paper"``.
        loss: the projection loss. ``"relative"`` (default): the share of the batch's
            spread left outside the rank-r subspace, ‖(A + b)W − (A + b)‖²_F /
            ‖A − ā‖²_F (A: the batch's rows, ā their mean); unchanged when the
            representation is scaled, so one weight suits every model and nothing
            pins ‖a‖. ``"paper"``: Sanyal et al.'s
            mean_i ‖(a_i + b)W − (a_i + b)‖², whose size follows the
            representation's scale, with the norm loss mean_i |1 − ‖a_i‖| against
            shrinking a. keras_lowrank/methods.md §1 compares them.
        update_every: W is hard-thresholded to rank r (its best rank-r
            approximation) on the first training step and then every
            ``update_every`` training steps (default 10).
        svd: how W is thresholded: ``"exact"`` (full SVD, O(m³)),
            ``"randomized"`` (randomized range finder with r + 10 columns and two
            power iterations, O(m² r)), or ``"auto"`` (default: randomized when
            r + 10 < m / 2, i.e. where it is cheaper).
        output_mode: ``"input"`` (default) returns the input unchanged — the virtual
            layer of the paper; ``"projection"`` returns Wᵀ(a + b) − b, the
            representation as seen through the rank-r subspace.
        flatten: if True (default) each sample's features are all its non-batch
            axes flattened (m = h·w·c for a conv map, as in the paper); if False
            the last axis holds the features and every other position is a sample
            (m = c, per-pixel channel vectors).
        kernel_initializer: initializer of W.
        bias_initializer: initializer of b.
        warmup_steps: T: the projection loss's weight grows linearly from 0 to λ_c
            over the first T training steps (≥ 0). Default (None): 500 with
            ``loss="relative"``, 0 (none, the paper's) with ``"paper"``.

    The representation is compressed after training with ``encode`` (r
    coefficients per sample) and ``decode`` (back to features).

    Input shape:
        any tensor ``(batch_size, ...)``: the representation the layer is attached to.

    Output shape:
        the input's shape (``output_mode="input"`` or ``"projection"``).

    Examples:
        attached after the penultimate layer; ``fit`` trains W with the
        losses and thresholds it, then ``encode`` stores r numbers per sample.

        >>> import numpy as np
        >>> inputs = keras.Input((8,))
        >>> features = keras.layers.Dense(16, activation="relu")(inputs)
        >>> lr = LowRankProjection(rank=3)
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(lr(features)))
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = model.fit(x, np.arange(32) % 2, epochs=1, verbose=0)
        >>> lr.threshold()
        >>> int(np.linalg.matrix_rank(ops.convert_to_numpy(lr.projection_matrix), tol=1e-4))
        3
        >>> tuple(lr.encode(np.ones((5, 16), "float32")).shape)
        (5, 3)

    References:
        - Sanyal, Torr & Dokania, "Robustness via Deep Low-Rank Representations" (first title "Low Rank Structure of
          Learned Representations"), 2018: https://arxiv.org/abs/1804.07090
    """

    def __init__(
        self,
        rank,
        projection_weight=None,
        norm_weight=None,
        loss="relative",
        update_every=10,
        output_mode="input",
        flatten=True,
        svd="auto",
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        warmup_steps=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        rank = check_int(rank, "rank")
        if loss not in _LOSSES:
            raise ValueError(f"`loss` must be one of {_LOSSES}, got loss={loss!r}.")
        if projection_weight is None:
            projection_weight = _RELATIVE_WEIGHT if loss == "relative" else 1.0
        if norm_weight is None:
            norm_weight = 0.0 if loss == "relative" else 1.0
        if warmup_steps is None:
            warmup_steps = _RELATIVE_WARMUP if loss == "relative" else 0
        warmup_steps = check_int(warmup_steps, "warmup_steps", minimum=0)
        projection_weight = check_number(projection_weight, "projection_weight", minimum=0.0)
        norm_weight = check_number(norm_weight, "norm_weight", minimum=0.0)
        update_every = check_int(update_every, "update_every")  # steps between thresholdings
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(
                f"`output_mode` must be one of {_OUTPUT_MODES}, got "
                f"output_mode={output_mode!r}."
            )
        if svd not in _SVD_MODES:
            raise ValueError(f"`svd` must be one of {_SVD_MODES}, got svd={svd!r}.")
        self.rank = rank
        self.loss = loss
        self.svd = svd
        self.projection_weight = float(projection_weight)
        self.norm_weight = float(norm_weight)
        self.update_every = update_every
        self.warmup_steps = warmup_steps
        self.output_mode = output_mode
        self.flatten = bool(flatten)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    # ------------------------------------------------------------------ build
    def _feature_size(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                "LowRankProjection expects inputs of rank ≥ 2 (batch, features"
                f"...), got input shape {tuple(input_shape)}."
            )
        dims = input_shape[1:] if self.flatten else input_shape[-1:]
        if any(d is None for d in dims):
            raise ValueError(
                "LowRankProjection needs the feature dimensions to be known, got "
                f"input shape {tuple(input_shape)} (flatten={self.flatten})."
            )
        size = 1
        for d in dims:
            size *= d
        return size

    def build(self, input_shape):
        m = self._feature_size(input_shape)
        if self.rank > m:
            raise ValueError(
                f"`rank` must be ≤ the feature size m={m} of the input "
                f"{tuple(input_shape)}, got rank={self.rank}."
            )
        self.features = m
        # Not autocast under mixed precision: thresholding (SVD/QR) and the
        # losses run in the variables' float32; the output is cast (``call``).
        self.kernel = self.add_weight(
            name="kernel", shape=(m, m), initializer=row_major(self.kernel_initializer),
            autocast=False,
        )
        self.bias = self.add_weight(
            name="bias", shape=(m,), initializer=self.bias_initializer,
            autocast=False,
        )
        # Keras' JAX trainer keeps only *non-trainable* state assigned inside
        # `call`, so the hard threshold is stored as a non-trainable correction:
        # W = kernel + threshold_correction. The optimizer moves `kernel`;
        # thresholding sets the correction so that W is exactly rank r.
        self.threshold_correction = self.add_weight(
            name="threshold_correction",
            shape=(m, m),
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        sketch_columns = min(m, self.rank + _OVERSAMPLING)
        self.randomized = self.svd == "randomized" or (
            self.svd == "auto" and sketch_columns < m / 2
        )
        if self.randomized:
            # A fixed Gaussian test matrix Ω for the range finder.
            self.sketch = self.add_weight(
                name="sketch", shape=(m, sketch_columns), trainable=False,
                initializer=keras.initializers.RandomNormal(seed=m),
                autocast=False,
            )
        self.steps = self.add_weight(
            name="steps", shape=(), initializer="zeros", dtype="int64",
            trainable=False,
        )

    # ----------------------------------------------------------------- public
    @property
    def projection_matrix(self):
        """W (m × m): the current projection matrix."""
        return self.kernel + self.threshold_correction

    def threshold(self):
        """Sets W to its best rank-r approximation now (e.g. after training)."""
        truncated, basis = self._truncate(self.projection_matrix)
        self.threshold_correction.assign(truncated - self.kernel)
        if self.randomized:
            self.sketch.assign(basis)

    def _truncate(self, w, warm=False):
        """W's best rank-r approximation (exact SVD, or the randomized range finder).

        The range finder starts from the sketch with two power iterations, or, ``warm``,
        with one: in training, from the second thresholding on, the sketch holds the
        previous thresholding's right singular vectors, which span the row space of the
        rank-r W it left (the optimizer has moved W a few steps since) — 4 products with W
        and 3 QRs instead of 6 and 5, as close to the exact SVD's approximation as the cold
        start (without the power iteration it was up to 3.5e-2 off it in relative norm on a
        layer trained with Adam; tested).

        Returns the approximation and the sketch to keep (its right singular vectors;
        None with the exact SVD). The caller assigns: inside a branch JAX cannot.
        """
        if not self.randomized:
            return truncate_to_rank(w, self.rank), None
        sketch = ops.convert_to_tensor(self.sketch)
        return randomized_truncate_to_rank(
            w, self.rank, sketch, power_iterations=1 if warm else 2, return_basis=True)

    def _check_ready(self, method, inputs, width=None):
        """``encode``/``decode``/the losses on a built layer and inputs of its width."""
        if not self.built:
            raise ValueError(f"LowRankProjection.{method}: the layer is not built yet; call it on "
                             "a batch (or train its model) first.")
        shape = tuple(ops.shape(inputs))
        if width is not None:  # decode: (n, r) coefficients
            if len(shape) != 2 or shape[-1] != width:
                raise ValueError(f"LowRankProjection.{method}: expected coefficients of shape (n, {width}) "
                                 f"(rank {width}), got {shape}.")
            return
        per_sample = shape[1:] if self.flatten else shape[-1:]
        if len(shape) < 2 or (None not in per_sample and math.prod(per_sample) != self.features):
            raise ValueError(
                f"LowRankProjection.{method}: the layer was built for {self.features} features per "
                f"{'sample' if self.flatten else 'position'}, got inputs of shape {shape}.")

    def encode(self, inputs):
        """Features → r coefficients: (a + b) U_r diag(s_r), with W = U S Vᵀ."""
        self._check_ready("encode", inputs)
        u, s, _ = ops.svd(self.projection_matrix, full_matrices=False)
        a = self._as_matrix(inputs)
        return ops.matmul(a + self.bias, u[:, : self.rank] * s[: self.rank])

    def decode(self, coefficients, shape=None):
        """r coefficients → features: c V_rᵀ − b (reshaped to ``shape`` if given)."""
        self._check_ready("decode", coefficients, width=self.rank)
        _, _, vt = ops.svd(self.projection_matrix, full_matrices=False)
        a = ops.matmul(coefficients, vt[: self.rank, :]) - self.bias
        return a if shape is None else ops.reshape(a, shape)

    def projection_loss(self, inputs):
        """L_c of ``inputs`` as a batch (unweighted, without the warm-up), per
        ``loss``: the share ‖(A + b)W − (A + b)‖²_F / ‖A − ā‖²_F or the paper's
        mean_i ‖Wᵀ(a_i + b) − (a_i + b)‖²."""
        self._check_ready("projection_loss", inputs)
        a = self._as_matrix(inputs)
        return self._projection_loss(a, self.projection_matrix)

    def norm_loss(self, inputs):
        """L_n = mean_i |1 − ‖a_i‖| (unweighted)."""
        return self._norm_loss(self._as_matrix(inputs))

    # ------------------------------------------------------------------- call
    def call(self, inputs, training=None):
        a = self._as_matrix(inputs)
        weight = self.projection_weight
        if self.warmup_steps:  # λ_c·min(1, t/T), t = training steps before this one
            done = ops.cast(self.steps, self.variable_dtype)
            weight = weight * ops.minimum(done / self.warmup_steps, 1.0)
        w = self._training_projection_matrix() if training else self.projection_matrix
        # (A + b)W once, for the loss and the output: each product costs n·m² forward
        # and 2·n·m² backward, and eager torch does not merge two equal ones.
        product = ops.matmul(a + self.bias, w) if self.projection_weight or self.output_mode != "input" else None
        if self.projection_weight:
            self.add_loss(weight * self._projection_loss(a, w, product))
        if self.norm_weight:
            self.add_loss(self.norm_weight * self._norm_loss(a))
        if self.output_mode == "input":
            return inputs
        projected = product - self.bias
        projected = ops.reshape(projected, ops.shape(inputs))
        return ops.cast(projected, self.compute_dtype)

    def _training_projection_matrix(self):
        """Thresholds W when a step is due; returns W with d W / d kernel = I."""
        # Gradients are stopped on the branch inputs: nothing differentiates
        # through QR/SVD, and the kept correction is returned bit for bit.
        kernel = ops.stop_gradient(self.kernel)
        correction = ops.stop_gradient(self.threshold_correction)
        due = ops.equal(ops.mod(self.steps, self.update_every), 0)
        if self.randomized:  # the first thresholding from the random sketch, then warm
            sketch = ops.convert_to_tensor(self.sketch)

            def threshold():
                truncated, basis = ops.cond(ops.equal(self.steps, 0),
                                            lambda: self._truncate(kernel + correction),
                                            lambda: self._truncate(kernel + correction, warm=True))
                return truncated - kernel, basis

            correction, sketch = ops.cond(due, threshold, lambda: (correction, sketch))
            self.sketch.assign(sketch)
        else:
            correction = ops.cond(due, lambda: self._truncate(kernel + correction)[0] - kernel,
                                  lambda: correction)
        self.threshold_correction.assign(correction)
        self.steps.assign_add(ops.cast(1, "int64"))
        return self.kernel + correction

    def _as_matrix(self, x):
        """(samples, features) in the variables' float32, also under mixed
        precision: SVD/QR have no float16/bfloat16 kernels, and the losses are
        kept in float32 as Keras keeps its own (``call`` casts its output back)."""
        x = ops.cast(x, self.variable_dtype)
        if self.flatten:
            return ops.reshape(x, (-1, self.features))
        return ops.reshape(x, (-1, ops.shape(x)[-1]))

    def _projection_loss(self, a, w, product=None):
        """L_c of the rows ``a`` under ``w``; ``product``: (a + b)w if already computed."""
        shifted = a + self.bias
        product = ops.matmul(shifted, w) if product is None else product
        squared = ops.sum(ops.square(product - shifted), axis=-1)
        if self.loss == "paper":
            return ops.mean(squared)
        # Relative: residual energy over the batch's spread. A batch without spread
        # (one sample, or identical ones, whose spread is rounding noise: below 1e-6 of
        # their energy) is measured against its uncentred energy, and an all-zero
        # batch adds nothing.
        spread = ops.sum(ops.square(a - ops.mean(a, axis=0, keepdims=True)))
        total = ops.sum(ops.square(a))
        energy = ops.where(spread > _NO_SPREAD * total, spread, total)
        safe = ops.where(energy > 0, energy, ops.ones_like(energy))
        share = ops.sum(squared) / safe
        return ops.where(energy > 0, share, ops.zeros_like(share))

    @staticmethod
    def _norm_loss(a):
        # max(·, tiny) keeps the gradient finite for an all-zero feature vector.
        norms = ops.sqrt(ops.maximum(ops.sum(ops.square(a), axis=-1), 1e-12))
        return ops.mean(ops.abs(1.0 - norms))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rank": self.rank,
                "loss": self.loss,
                "projection_weight": self.projection_weight,
                "norm_weight": self.norm_weight,
                "warmup_steps": self.warmup_steps,
                "update_every": self.update_every,
                "output_mode": self.output_mode,
                "flatten": self.flatten,
                "svd": self.svd,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Configs saved before `loss` existed (v0.1) trained with the paper's loss;
        # those before `warmup_steps`, without warm-up.
        config = dict(config)
        config.setdefault("loss", "paper")
        config.setdefault("warmup_steps", 0)
        return super().from_config(config)
