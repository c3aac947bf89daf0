"""Dense, Conv1D/Conv2D and EinsumDense layers whose kernel is held as W = U S Vᵀ.

Schotthöfer, Wang & Schnake, "Dynamical Low-Rank Compression of Neural Networks
with Robustness under Adversarial Attacks" (NeurIPS 2025); keras_lowrank/methods.md §2.

U (n_in × r_max) and V (n_out × r_max) have orthonormal active columns, S is
r_max × r_max; the active rank r is the number of non-zero columns of U (see
``factorization``). Train them with ``keras_lowrank.optimizers.DLRT`` (the
rank-adaptive integrator) or with any optimizer plus the callbacks in
``keras_lowrank.callbacks``.
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import build_input_shape
from keras_lowrank._low_rank import factorization
from keras_lowrank._low_rank import host_factorization as host
from keras_lowrank._low_rank.svd import leading_pays, matrix_svd
from keras_lowrank._tracing import concrete, holds_values, row_major
from keras_lowrank._validation import check_int, check_number

FACTOR_ROLE = "_keras_lowrank_role"
FACTOR_OWNER = "_keras_lowrank_owner"


def _check_positive_int(value, name, allow_none=False):
    return check_int(value, name, minimum=1, allow_none=allow_none)


class DynamicLowRankBase(keras.layers.Layer):
    """Shared machinery: factor variables, rank bookkeeping, spectral loss.

    Subclasses define ``_matrix_shape(input_shape)`` → (n_in, n_out),
    ``_kernel_shape(n_in, n_out)`` (the shape the kernel initializer sees),
    ``_apply_kernel(inputs, u, s_vt)``, and for conversion and export ``keras_class``
    (the equivalent Keras layer), ``keras_argument_names`` (its arguments besides the
    activation that the low-rank class takes too), ``_keras_arguments()`` (their
    values) and ``exported_layers(rank)``.
    """

    def __init__(
        self,
        max_rank=None,
        rank=None,
        min_rank=1,
        tol=0.1,
        spectral_weight=0.0,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kernel_constraint is not None:
            raise ValueError(
                "`kernel_constraint` is not supported: a constraint projects the kernel W "
                "after each step, but W = U S Vᵀ is trained through its factors (and DLRT "
                "keeps U, V orthonormal). Use `SpectralConditioning` to bound cond(W), or a "
                "kernel_regularizer.")
        max_rank = _check_positive_int(max_rank, "max_rank", allow_none=True)
        rank = _check_positive_int(rank, "rank", allow_none=True)
        min_rank = _check_positive_int(min_rank, "min_rank")
        if max_rank is not None and min_rank > max_rank:
            raise ValueError(
                f"`min_rank` ({min_rank}) must be ≤ `max_rank` ({max_rank})."
            )
        if rank is not None and not (
            min_rank <= rank <= (max_rank if max_rank is not None else rank)
        ):
            raise ValueError(
                f"`rank` must satisfy min_rank ≤ rank ≤ max_rank, got rank={rank}, "
                f"min_rank={min_rank}, max_rank={max_rank}."
            )
        tol = check_number(tol, "tol", minimum=0.0, maximum=1.0, strict=True)
        spectral_weight = check_number(spectral_weight, "spectral_weight", minimum=0.0)
        self.max_rank = None if max_rank is None else int(max_rank)
        self.initial_rank = None if rank is None else int(rank)
        self.min_rank = int(min_rank)
        self.tol = float(tol)
        self.spectral_weight = float(spectral_weight)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    # -- construction -------------------------------------------------------
    def build(self, input_shape):
        n_in, n_out = self._matrix_shape(input_shape)
        full = min(n_in, n_out)
        if self.max_rank is None:
            self.max_rank = max(self.min_rank, full // 2)
        if self.max_rank > full:
            raise ValueError(
                f"`max_rank` ({self.max_rank}) must be ≤ min(n_in, n_out) = {full} "
                f"for layer {self.name!r} (n_in={n_in}, n_out={n_out})."
            )
        if self.min_rank > self.max_rank:
            raise ValueError(
                f"`min_rank` ({self.min_rank}) must be ≤ `max_rank` ({self.max_rank})."
            )
        if self.initial_rank is None:
            self.initial_rank = max(self.min_rank, self.max_rank // 2)
        if self.initial_rank > self.max_rank:
            raise ValueError(
                f"`rank` ({self.initial_rank}) must be ≤ `max_rank` ({self.max_rank})."
            )
        self.n_in, self.n_out = n_in, n_out
        self.input_spec = self._built_input_spec(input_shape)
        # The rank-r truncation of the kernel a full layer would start from,
        # computed when the variables are initialised, not here: a subclassed
        # model builds its layers inside a traced call (Keras' symbolic build,
        # tf.function, jax.jit), where a value computed in `build` is a traced
        # tensor the variables must not capture. Keras initialises variables
        # outside the trace (TF lifts the initializer, JAX defers it) but may
        # also call an initializer inside it for a placeholder value; only a
        # concrete draw is kept, so that U, S and V share one kernel.
        # ``from_keras_layer`` hands over the factors it will assign (``_initial_factors``):
        # no kernel drawn and decomposed in vain (a 4096 × 4096 SVD takes seconds).
        planned, self._initial_factors = getattr(self, "_initial_factors", None), None
        initial = {}

        def initializer(role):
            def initialize(shape, dtype=None):
                if initial:
                    return initial[role]
                if planned is not None:
                    factors = dict(zip("USV", self._pad_factors(*planned, self.initial_rank)))
                else:
                    kernel = self.kernel_initializer(self._kernel_shape(n_in, n_out), self.dtype)
                    factors = dict(zip("USV", self._pad_factors(*_leading_factors(
                        kernel, (n_in, n_out), self.initial_rank), self.initial_rank)))
                values = concrete(*factors.values())
                if values is None:  # traced: a placeholder, not kept
                    return factors[role]
                initial.update(zip(factors, values))
                return initial[role]

            return initialize

        self.u = self._add_factor("U", (n_in, self.max_rank), initializer("U"))
        self.s = self._add_factor("S", (self.max_rank, self.max_rank), initializer("S"))
        self.v = self._add_factor("V", (n_out, self.max_rank), initializer("V"))
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=self._bias_shape(), initializer=self.bias_initializer,
                regularizer=self.bias_regularizer, constraint=self.bias_constraint,
            )
        else:
            self.bias = None

    def _bias_shape(self):
        return (self.n_out,)

    def _add_factor(self, role, shape, initializer):
        variable = self.add_weight(name=role, shape=shape, initializer=row_major(initializer))
        setattr(variable, FACTOR_ROLE, role)
        setattr(variable, FACTOR_OWNER, weakref.ref(self))
        return variable

    def _pad_factors(self, u, s, v, rank):
        """Zero-pad rank-``rank`` factors (u: n_in × k, s: (k,) or k × k,
        v: n_out × k, k ≥ rank) to the storage shape at r_max: in NumPy where they
        are concrete (eager ops on JAX compile a program per op and shape: every
        layer of a converted DenseNet121 would pay ~5), else in ``keras.ops``."""
        values = concrete(u, s, v)
        if values is None:  # traced
            return self._pad_traced_factors(u, s, v, rank)
        u, s, v = values
        dtype = keras.backend.standardize_dtype(self.dtype)
        s = np.diag(s[:rank]) if s.ndim == 1 else s[:rank, :rank]
        pad = self.max_rank - rank
        padded = (np.pad(u[:, :rank], [[0, 0], [0, pad]]), np.pad(s, [[0, pad], [0, pad]]),
                  np.pad(v[:, :rank], [[0, 0], [0, pad]]))
        if dtype in ("float16", "float32", "float64"):
            return tuple(t.astype(dtype) for t in padded)
        return tuple(ops.convert_to_tensor(t, dtype) for t in padded)  # bfloat16: not NumPy's

    def _pad_traced_factors(self, u, s, v, rank):
        u = ops.convert_to_tensor(u, self.dtype)[:, :rank]
        v = ops.convert_to_tensor(v, self.dtype)[:, :rank]
        s = ops.convert_to_tensor(s, self.dtype)
        s = ops.diag(s[:rank]) if len(s.shape) == 1 else s[:rank, :rank]
        pad = self.max_rank - rank
        return (
            ops.pad(u, [[0, 0], [0, pad]]),
            ops.pad(s, [[0, pad], [0, pad]]),
            ops.pad(v, [[0, 0], [0, pad]]),
        )

    # -- state --------------------------------------------------------------
    @property
    def rank(self):
        """The current active rank r (a Python int)."""
        return host.active_rank(ops.convert_to_numpy(self.u))

    def factors(self):
        """The active factors (U_r, S_r, V_r) as numpy arrays; W = U_r S_r V_rᵀ."""
        r = self.rank
        u, s, v = (ops.convert_to_numpy(t) for t in (self.u, self.s, self.v))
        return u[:, :r], s[:r, :r], v[:, :r]

    def set_factors(self, u, s, v):
        """Assigns factors of any rank ≤ max_rank (u: n_in × r with orthonormal
        columns, s: r × r or (r,), v: n_out × r); they are not re-orthonormalised."""
        if not self.built:
            raise ValueError("set_factors: the layer is not built yet (its shapes come from its input); "
                             "build it or call it on a batch first.")
        for name, value in (("u", u), ("s", s), ("v", v)):
            value = np.asarray(ops.convert_to_numpy(value))
            if value.dtype.kind not in "biuf" or not np.all(np.isfinite(value)):
                raise ValueError(f"set_factors: `{name}` must hold finite numbers (got NaN, ±inf or "
                                 f"dtype {value.dtype}).")
        u_shape, s_shape, v_shape = (tuple(ops.shape(t)) for t in (u, s, v))
        rank = u_shape[1] if len(u_shape) == 2 else None
        if (len(u_shape) != 2 or u_shape[0] != self.n_in or v_shape != (self.n_out, rank)
                or s_shape not in ((rank,), (rank, rank))):
            raise ValueError(
                f"set_factors: expected u ({self.n_in}, r), s (r, r) or (r,), v ({self.n_out}, r); "
                f"got u {u_shape}, s {s_shape}, v {v_shape}.")
        if not self.min_rank <= rank <= self.max_rank:
            raise ValueError(
                f"rank of the given factors ({rank}) must be in "
                f"[min_rank, max_rank] = [{self.min_rank}, {self.max_rank}]."
            )
        for variable, value in zip((self.u, self.s, self.v), self._pad_factors(u, s, v, rank)):
            variable.assign(value)

    @property
    def kernel(self):
        """The full kernel U S Vᵀ in the shape of the equivalent Keras layer."""
        matrix = ops.matmul(ops.matmul(self.u, self.s), ops.transpose(self.v))
        return ops.reshape(matrix, self._kernel_shape(self.n_in, self.n_out))

    # -- export -------------------------------------------------------------
    def exported_layers(self, rank):
        """Keras' own layers computing this layer at ``rank``, unbuilt: x U_r, then
        (S_r V_rᵀ) + b with the activation — the factored form ``compressed_model``
        writes (their kernels are U_r and S_r V_rᵀ reshaped)."""
        raise NotImplementedError

    @classmethod
    def from_keras_layer(cls, layer, factors, max_rank=None, **kwargs):
        """The low-rank layer standing for the Keras layer ``layer``, built, with the
        given factors of its kernel matrix and its bias, activation, regularizers,
        bias initializer and constraint, name and dtype policy.

        The factors become the initial U, S, V as the variables are created: no kernel
        is drawn and decomposed in vain (a 4096 × 4096 SVD takes seconds).

        Args:
            layer: a built layer of class ``keras_class`` (exactly: a subclass may
                compute something else).
            factors: (u, d, v): u (n_in × r) with orthonormal columns, d the r
                singular values (or an r × r S), v (n_out × r); e.g. a truncated SVD of
                the kernel as an n_in × n_out matrix.
            max_rank: the storage rank r_max (≥ r; default: the class's, from r).

        Keyword Args:
            min_rank: as in the constructor, as are ``tol`` and ``spectral_weight``.

        Returns:
            the new layer (built), computing U S Vᵀ where ``layer`` computes its kernel.

        Examples:
            at full rank the layer computes what the Dense does.

            >>> dense = keras.layers.Dense(3)
            >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
            >>> y = dense(x)
            >>> u, d, vt = np.linalg.svd(ops.convert_to_numpy(dense.kernel), full_matrices=False)
            >>> low = DynamicLowRankDense.from_keras_layer(dense, (u, d, vt.T), max_rank=3)
            >>> low.rank, bool(np.allclose(ops.convert_to_numpy(low(x)), ops.convert_to_numpy(y), atol=1e-5))
            (3, True)
        """
        if type(layer) is not cls.keras_class:
            raise ValueError(f"{cls.__name__}.from_keras_layer takes a {cls.keras_class.__name__}, got "
                             f"{type(layer).__name__} {layer.name!r}.")
        if not layer.built:
            raise ValueError(f"from_keras_layer: layer {layer.name!r} is not built (its kernel's shape comes "
                             "from its input); build it or call it on a batch first.")
        config = layer.get_config()
        u, d, v = factors
        new = cls(**{name: config[name] for name in cls.keras_argument_names}, max_rank=max_rank,
                  rank=int(ops.shape(u)[1]), activation=config["activation"], name=config["name"],
                  dtype=config.get("dtype"), bias_initializer=config["bias_initializer"],
                  kernel_regularizer=config.get("kernel_regularizer"),
                  bias_regularizer=config.get("bias_regularizer"),
                  activity_regularizer=config.get("activity_regularizer"),
                  bias_constraint=config.get("bias_constraint"), **kwargs)
        new._initial_factors = (u, d, v)  # read once, in ``build``
        new.build(tuple(build_input_shape(layer)))
        new.set_factors(u, d, v)  # checks the shapes and rank bounds with a clear error
        if getattr(layer, "bias", None) is not None:
            new.bias.assign(ops.convert_to_numpy(layer.bias))  # a copy: JAX donates buffers
        return new

    def exported_dense_layer(self):
        """The one Keras layer (``keras_class``) computing this layer with its kernel
        U S Vᵀ multiplied back (the ``kernel`` property), unbuilt — the form
        ``compressed_model`` writes where it is smaller or faster than the pair."""
        return self.keras_class(**self._keras_arguments(), activation=keras.activations.serialize(self.activation),
                                name=self.name, dtype=self.dtype_policy)

    # -- forward ------------------------------------------------------------
    def call(self, inputs):
        if self.kernel_regularizer is not None:
            # On the kernel W = U S Vᵀ itself, as Dense's: one n_in × r × n_out
            # product per step (for an L2 regularizer ‖W‖² = ‖S‖², U and V orthonormal).
            self.add_loss(self.kernel_regularizer(self.kernel))
        if self.spectral_weight > 0:
            rank = factorization.active_rank(self.u)
            self.add_loss(self.spectral_weight * factorization.spectral_penalty(self.s, rank))
        s_vt = ops.matmul(self.s, ops.transpose(self.v))
        outputs = self._apply_kernel(inputs, self.u, s_vt)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            max_rank=self.max_rank,
            rank=self._config_rank(),
            min_rank=self.min_rank,
            tol=self.tol,
            spectral_weight=self.spectral_weight,
            activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            bias_constraint=keras.constraints.serialize(self.bias_constraint),
        )
        return config

    def _config_rank(self):
        """The current rank once built (``rank`` means the current rank, as the
        property does), else the initial one."""
        if not self.built or not holds_values(self.u.value):  # inside a trace: no host read
            return self.initial_rank
        return self.rank


def _svd_factors(matrix):
    u, s, vt = ops.svd(matrix, full_matrices=False)
    return u, s, ops.transpose(vt)


def _leading_factors(kernel, shape, rank):
    """(U, d, V) holding at least the leading ``rank`` triplets of a drawn kernel, as a
    matrix of ``shape`` (n_in, n_out). A concrete kernel is decomposed in float64 NumPy
    (``_low_rank.svd.matrix_svd``): by ARPACK where few of a large matrix's are needed (far
    cheaper than a full SVD of e.g. a 4096 × 4096 kernel at max_rank 64), else by
    LAPACK's full SVD up to 1024 on the short side (an eager ``ops.svd`` on JAX would
    compile for each layer shape). A larger full SVD and a traced kernel take the
    backend's SVD (float32, faster there)."""
    if leading_pays(shape, rank) or min(shape) <= 1024:
        values = concrete(kernel)
        if values is not None:  # else traced: the backend's SVD
            return matrix_svd(values[0].astype("float64").reshape(shape), rank)
    return _svd_factors(ops.reshape(kernel, shape))


@keras.saving.register_keras_serializable(package="keras_lowrank")
class DynamicLowRankDense(DynamicLowRankBase):
    """Dense layer with kernel W = U S Vᵀ of adaptive rank: y = ((x U) S) Vᵀ + b.

    Args:
        units: output size.
        max_rank: storage rank r_max ≤ min(n_in, units); compute and memory scale
            with it (default min(n_in, units) // 2).
        rank: initial rank (default r_max // 2); the integrator grows it up to
            r_max and truncates it by ``tol``.

    Keyword Args:
        min_rank: the rank never goes below this (default 1).
        tol: relative truncation tolerance in (0, 1): keep the fewest singular
            values with ‖d[r:]‖₂ < tol·‖d‖₂ (default 0.1).
        spectral_weight: β of the spectral regularizer β‖S Sᵀ − α² I‖_F,
            α² = ‖S‖_F²/r, added to the model's losses (default 0: off).
        activation: as in ``keras.layers.Dense``.
        use_bias: as in Dense.
        kernel_initializer: as in Dense; from scratch the factors are the SVD of
            a kernel drawn from it, truncated to ``rank`` (in float64 NumPy; a few
            leading triplets of a large kernel by SciPy's ARPACK, where installed;
            the backend's SVD for a full one above 1024 on the short side).
        bias_initializer: as in Dense.
        kernel_regularizer: applied to the kernel W = U S Vᵀ, as Dense's.
        bias_regularizer: as in Dense.
        bias_constraint: as in Dense.
        activity_regularizer: as in Dense.
        kernel_constraint: not supported (ValueError): W is trained through its
            factors; ``callbacks.SpectralConditioning`` bounds cond(W).

    ``rank`` is the current active rank: the property, and the ``rank`` of
    ``get_config`` once the layer is built (so a reloaded layer starts there).

    Input shape:
        N-D tensor of shape ``(batch_size, ..., input_dim)``, as Dense's.

    Output shape:
        N-D tensor of shape ``(batch_size, ..., units)``.

    Examples:
        trained by the ``DLRT`` optimizer, which adapts the rank.

        >>> from keras_lowrank.optimizers import DLRT
        >>> layer = DynamicLowRankDense(16, max_rank=8, rank=4)
        >>> model = keras.Sequential([keras.Input((16,)), layer])
        >>> u, s, v = layer.factors()
        >>> u.shape, s.shape, v.shape, layer.rank
        ((16, 4), (4, 4), (16, 4), 4)
        >>> bool(np.allclose(u.T @ u, np.eye(4), atol=1e-5))  # orthonormal basis
        True
        >>> model.compile(DLRT(keras.optimizers.Adam(1e-3), steps_per_cycle=2), "mse")
        >>> x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
        >>> _ = model.fit(x, x, epochs=2, verbose=0)
        >>> 1 <= layer.rank <= 8
        True

    References:
        - Schotthöfer, Zangrando, Kusch, Ceruti & Tudisco, "Low-rank lottery tickets: finding efficient low-rank
          neural networks via matrix differential equations", NeurIPS 2022: https://arxiv.org/abs/2205.13571
        - Schotthöfer et al., "Dynamical Low-Rank Compression of Neural Networks with Robustness under Adversarial
          Attacks", NeurIPS 2025: https://arxiv.org/abs/2505.08022
    """

    keras_class = keras.layers.Dense

    def __init__(self, units, max_rank=None, rank=None, **kwargs):
        units = _check_positive_int(units, "units")
        super().__init__(max_rank=max_rank, rank=rank, **kwargs)
        self.units = int(units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def _matrix_shape(self, input_shape):
        return int(input_shape[-1]), self.units

    def _built_input_spec(self, input_shape):
        return keras.layers.InputSpec(min_ndim=2, axes={-1: int(input_shape[-1])})

    def _kernel_shape(self, n_in, n_out):
        return (n_in, n_out)

    def _apply_kernel(self, inputs, u, s_vt):
        return ops.matmul(ops.matmul(inputs, u), s_vt)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    keras_argument_names = ("units", "use_bias")

    def _keras_arguments(self):
        return dict(units=self.units, use_bias=self.use_bias)

    def exported_layers(self, rank):
        return [keras.layers.Dense(rank, use_bias=False, name=f"{self.name}_u", dtype=self.dtype_policy),
                keras.layers.Dense(self.units, activation=keras.activations.serialize(self.activation),
                                   use_bias=self.use_bias, name=f"{self.name}_sv", dtype=self.dtype_policy)]

    def multiply_adds(self, rank=None, input_shape=None):
        """Multiply-adds per sample of the dense and of the rank-r layer (S folded):
        n_in·n_out and r(n_in + n_out) at each position the layer is applied at — one for
        a (batch, features) input, h·w for a (batch, h, w, c) map (ConvNeXt's MLPs)."""
        rank = self.rank if rank is None else rank
        shape = input_shape or build_input_shape(self)
        if shape is None:
            raise ValueError(f"Layer {self.name!r} is not built; pass `input_shape`.")
        positions = int(np.prod([d for d in shape[1:-1] if d is not None]))
        return positions * self.n_in * self.n_out, positions * rank * (self.n_in + self.n_out)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
