"""Dense, Conv1D/Conv2D and EinsumDense layers whose kernel is held as W = U S Vᵀ.

Schotthöfer, Wang & Schnake, "Dynamical Low-Rank Compression of Neural Networks
with Robustness under Adversarial Attacks" (NeurIPS 2025); docs/methods.md §2.

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

from keras_lowrank import _host_factorization as host
from keras_lowrank import factorization
from keras_lowrank._keras_compat import build_input_shape, compute_conv_output_shape, einsum_dense_shapes
from keras_lowrank._svd import leading_pays, matrix_svd
from keras_lowrank._validation import check_int, check_number

FACTOR_ROLE = "_keras_lowrank_role"
FACTOR_OWNER = "_keras_lowrank_owner"


def _check_positive_int(value, name, allow_none=False):
    return check_int(value, name, minimum=1, allow_none=allow_none)


class DynamicLowRankBase(keras.layers.Layer):
    """Shared machinery: factor variables, rank bookkeeping, spectral loss.

    Subclasses define ``_matrix_shape(input_shape)`` → (n_in, n_out),
    ``_kernel_shape(n_in, n_out)`` (the shape the kernel initializer sees) and
    ``_apply_kernel(inputs, u, s_vt)``.
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
        # ``to_low_rank`` hands over the factors it will assign (``_initial_factors``):
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
                try:
                    initial.update({k: ops.convert_to_numpy(v) for k, v in factors.items()})
                except Exception:  # traced: a placeholder, not kept
                    return factors[role]
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
        variable = self.add_weight(name=role, shape=shape, initializer=initializer)
        setattr(variable, FACTOR_ROLE, role)
        setattr(variable, FACTOR_OWNER, weakref.ref(self))
        return variable

    def _pad_factors(self, u, s, v, rank):
        """Zero-pad rank-``rank`` factors (u: n_in × k, s: (k,) or k × k,
        v: n_out × k, k ≥ rank) to the storage shape at r_max: in NumPy where they
        are concrete (eager ops on JAX compile a program per op and shape: every
        layer of a converted DenseNet121 would pay ~5), else in ``keras.ops``."""
        try:
            u, s, v = (np.asarray(ops.convert_to_numpy(t)) for t in (u, s, v))
        except Exception:  # traced
            return self._pad_traced_factors(u, s, v, rank)
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
        if not self.built:
            return self.initial_rank
        try:
            return self.rank
        except Exception:  # a traced value (inside a trace): the initial rank
            return self.initial_rank


def _svd_factors(matrix):
    u, s, vt = ops.svd(matrix, full_matrices=False)
    return u, s, ops.transpose(vt)


def _leading_factors(kernel, shape, rank):
    """(U, d, V) holding at least the leading ``rank`` triplets of a drawn kernel, as a
    matrix of ``shape`` (n_in, n_out). A concrete kernel is decomposed in float64 NumPy
    (``_svd.matrix_svd``): by ARPACK where few of a large matrix's are needed
    (``DynamicLowRankDense(4096, max_rank=64)`` on 4096 inputs: ~1 s instead of a 14 s
    full SVD on TF), else by LAPACK's full SVD up to 1024 on the short side (an eager
    ``ops.svd`` on JAX compiles for each layer shape: 12 layers built in 5.6 s against
    Dense's 2.6 s). A larger full SVD and a traced kernel take the backend's SVD
    (float32, faster there)."""
    if leading_pays(shape, rank) or min(shape) <= 1024:
        try:
            concrete = np.asarray(ops.convert_to_numpy(kernel), "float64").reshape(shape)
        except Exception:  # traced: the backend's SVD
            concrete = None
        if concrete is not None:
            return matrix_svd(concrete, rank)
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
    """

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

    def multiply_adds(self, rank=None):
        """Multiply-adds per sample of the dense and of the rank-r layer (S folded)."""
        rank = self.rank if rank is None else rank
        return self.n_in * self.n_out, rank * (self.n_in + self.n_out)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class _DynamicLowRankConv(DynamicLowRankBase):
    """What the N-d convolutions share: the kernel as a (k₁⋯k_N·c_in) × c_out
    matrix U S Vᵀ, computed as a convolution to r_max channels with kernel U and a
    1×1 map S Vᵀ."""

    spatial = None  # number of spatial axes, set by the subclasses
    keras_class = None  # the equivalent Keras layer

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, max_rank=None, rank=None, **kwargs):
        filters = _check_positive_int(filters, "filters")
        kind = type(self).__name__
        if groups != 1:
            raise ValueError(
                f"`groups` must be 1 for {kind}, got {groups!r}: a grouped "
                "kernel is block-diagonal, not one low-rank matrix."
            )
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_last":
            raise ValueError(
                f"`data_format` must be 'channels_last', got {data_format!r}."
            )
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same', got {padding!r}"
                             + (" (a causal convolution has no low-rank form here)." if padding == "causal" else "."))
        super().__init__(max_rank=max_rank, rank=rank, **kwargs)
        self.filters = int(filters)
        self.kernel_size = _tuple(kernel_size, self.spatial, "kernel_size")
        self.strides = _tuple(strides, self.spatial, "strides")
        self.dilation_rate = _tuple(dilation_rate, self.spatial, "dilation_rate")
        self.padding = padding
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=self.spatial + 2)

    def _matrix_shape(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError("The channel axis of the input must be defined.")
        self.input_channels = int(input_shape[-1])
        return int(np.prod(self.kernel_size)) * self.input_channels, self.filters

    def _kernel_shape(self, n_in, n_out):
        return (*self.kernel_size, self.input_channels, n_out)

    def _built_input_spec(self, input_shape):
        return keras.layers.InputSpec(ndim=self.spatial + 2, axes={-1: int(input_shape[-1])})

    def _apply_kernel(self, inputs, u, s_vt):
        u_kernel = ops.reshape(u, (*self.kernel_size, self.input_channels, self.max_rank))
        hidden = ops.conv(
            inputs,
            u_kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return ops.matmul(hidden, s_vt)

    def compute_output_shape(self, input_shape):
        return compute_conv_output_shape(
            input_shape,
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format=self.data_format,
            dilation_rate=self.dilation_rate,
        )

    def multiply_adds(self, rank=None, input_shape=None):
        """Multiply-adds per sample of the dense and of the rank-r convolution."""
        rank = self.rank if rank is None else rank
        shape = input_shape or build_input_shape(self)
        if shape is None:
            raise ValueError(f"Layer {self.name!r} is not built; pass `input_shape`.")
        out = self.compute_output_shape(shape)
        positions = int(np.prod(out[1:1 + self.spatial]))
        return positions * self.n_in * self.n_out, positions * rank * (self.n_in + self.n_out)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
        }


@keras.saving.register_keras_serializable(package="keras_lowrank")
class DynamicLowRankConv2D(_DynamicLowRankConv):
    """Conv2D whose kernel, as a (kh·kw·c_in) × c_out matrix, is W = U S Vᵀ.

    Computed as a kh×kw convolution to r_max channels with kernel U followed by a
    1×1 map S Vᵀ — the matrix form of CondLR (docs/methods.md §2): one ordinary
    convolution, so every backend's fast conv kernel applies. Only
    ``data_format="channels_last"`` and ``groups=1``.

    Args:
        filters: as in ``keras.layers.Conv2D``.
        kernel_size: as in Conv2D.
        strides: as in Conv2D.
        padding: ``"valid"`` or ``"same"``.
        data_format: only ``"channels_last"`` (or None).
        dilation_rate: as in Conv2D.
        groups: only 1.
        max_rank: as in ``DynamicLowRankDense``, for the kernel matrix.
        rank: as in ``DynamicLowRankDense``.

    Keyword Args:
        min_rank: as in ``DynamicLowRankDense``, as are ``tol``,
            ``spectral_weight``, ``activation``, ``use_bias``, the initializers,
            regularizers and ``bias_constraint``.

    Examples:

        >>> layer = DynamicLowRankConv2D(8, 3, padding="same", max_rank=4)
        >>> y = layer(np.zeros((2, 5, 5, 3), "float32"))
        >>> tuple(y.shape), tuple(layer.kernel.shape)  # the equivalent Conv2D kernel
        ((2, 5, 5, 8), (3, 3, 3, 8))
    """

    spatial = 2
    keras_class = keras.layers.Conv2D

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, max_rank=None, rank=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, data_format=data_format,
                         dilation_rate=dilation_rate, groups=groups, max_rank=max_rank, rank=rank, **kwargs)


@keras.saving.register_keras_serializable(package="keras_lowrank")
class DynamicLowRankConv1D(_DynamicLowRankConv):
    """Conv1D whose kernel, as a (k·c_in) × c_out matrix, is W = U S Vᵀ: signals,
    audio, sequences (MNIST-1D). As ``DynamicLowRankConv2D`` with one spatial
    axis; ``padding="causal"`` is refused (no low-rank form here).

    Args:
        filters: as in ``keras.layers.Conv1D``.
        kernel_size: as in Conv1D.
        strides: as in Conv1D.
        padding: ``"valid"`` or ``"same"``.
        data_format: only ``"channels_last"`` (or None).
        dilation_rate: as in Conv1D.
        groups: only 1.
        max_rank: as in ``DynamicLowRankDense``, for the kernel matrix.
        rank: as in ``DynamicLowRankDense``.

    Keyword Args:
        min_rank: as in ``DynamicLowRankDense``, as are ``tol``,
            ``spectral_weight``, ``activation``, ``use_bias``, the initializers,
            regularizers and ``bias_constraint``.

    Examples:

        >>> layer = DynamicLowRankConv1D(8, 5, padding="same", max_rank=4)
        >>> y = layer(np.zeros((2, 40, 3), "float32"))
        >>> tuple(y.shape), tuple(layer.kernel.shape)  # the equivalent Conv1D kernel
        ((2, 40, 8), (5, 3, 8))
    """

    spatial = 1
    keras_class = keras.layers.Conv1D


@keras.saving.register_keras_serializable(package="keras_lowrank")
class DynamicLowRankEinsumDense(DynamicLowRankBase):
    """``keras.layers.EinsumDense`` whose kernel, as a matrix, is W = U S Vᵀ: the
    projections of attention and the MLPs of transformers.

    The kernel's axes are of two kinds: those contracted with the input (their
    product is n_in) and those that appear only in the output (n_out); W is the
    kernel with the first kind flattened into rows and the second into columns.
    The layer computes ``einsum(equation, x, W)`` as two einsums, x against U (to r_max
    coefficients per position) and those against S Vᵀ, e.g. for
    ``"abc,cde->abde"`` (a query projection: c = model width, d = heads, e = head
    size) ``"abc,cz->abz"`` then ``"abz,zde->abde"``. Equations whose kernel shares an
    axis with both input and output (a per-position weight, no single matrix) are
    refused.

    Args:
        equation: as in ``keras.layers.EinsumDense``.
        output_shape: as in EinsumDense (the output's shape without the batch axis
            and the ellipsis' axes).
        bias_axes: as in EinsumDense (None: no bias).
        max_rank: as in ``DynamicLowRankDense``, for the kernel matrix
            (n_in × n_out).
        rank: as in ``DynamicLowRankDense``.

    Keyword Args:
        min_rank: as in ``DynamicLowRankDense``, as are ``tol``,
            ``spectral_weight``, ``activation``, the initializers (the kernel
            initializer draws the n_in × n_out matrix, whose fans are those Keras'
            EinsumDense gives it), regularizers and ``bias_constraint``.

    Examples:

        >>> layer = DynamicLowRankEinsumDense("abc,cde->abde", (None, 4, 8), bias_axes="de", max_rank=6)
        >>> y = layer(np.zeros((2, 5, 16), "float32"))
        >>> tuple(y.shape), tuple(layer.kernel.shape), (layer.n_in, layer.n_out)
        ((2, 5, 4, 8), (16, 4, 8), (16, 32))
    """

    keras_class = keras.layers.EinsumDense

    def __init__(self, equation, output_shape, bias_axes=None, max_rank=None, rank=None, use_bias=None,
                 **kwargs):
        if not isinstance(equation, str):
            raise ValueError(f"`equation` must be a string such as 'abc,cd->abd', got {equation!r}.")
        if use_bias is not None and bool(use_bias) != (bias_axes is not None):
            raise ValueError(
                f"`use_bias={use_bias}` contradicts `bias_axes={bias_axes!r}`: an EinsumDense has a "
                "bias exactly when `bias_axes` names its axes.")
        super().__init__(max_rank=max_rank, rank=rank, use_bias=bias_axes is not None, **kwargs)
        self.equation = equation
        shape = (output_shape,) if isinstance(output_shape, (int, np.integer)) else tuple(output_shape)
        if any(d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1)
               for d in shape):
            raise ValueError(f"`output_shape` must hold positive ints (None: an axis of the input's), "
                             f"got output_shape={output_shape!r}.")
        self.partial_output_shape = tuple(None if d is None else int(d) for d in shape)
        self.bias_axes = bias_axes
        self._plan = _einsum_plan(equation)  # checks the equation now, not at build

    def _matrix_shape(self, input_shape):
        kernel_shape, self._bias_dims, _ = einsum_dense_shapes(
            self.equation, self.bias_axes, input_shape, self.partial_output_shape)
        if any(d is None for d in kernel_shape):
            raise ValueError(
                f"The kernel shape of {self.name!r} ({kernel_shape}) must be fully known: give "
                "`output_shape` every axis the kernel produces.")
        self._in_dims = [int(kernel_shape[i]) for i in self._plan["contracted"]]
        self._out_dims = [int(kernel_shape[i]) for i in self._plan["produced"]]
        # The exported first layer's output_shape: the input's sizes of the hidden
        # tensor's axes that EinsumDense asks for, then the rank.
        letters = self._plan["input_letters"]
        sizes = input_shape[len(input_shape) - len(letters):] if self._plan["left_ellipsis"] \
            else input_shape[:len(letters)]
        size_of = dict(zip(letters, sizes))
        self._hidden_sizes = [size_of[c] for c in self._plan["hidden_sized"]]
        return int(np.prod(self._in_dims)), int(np.prod(self._out_dims))

    def _bias_shape(self):
        return self._bias_dims

    def _kernel_shape(self, n_in, n_out):
        # What the kernel initializer draws: the matrix itself (fans n_in, n_out).
        return (n_in, n_out)

    def _built_input_spec(self, input_shape):
        return keras.layers.InputSpec(ndim=len(input_shape))

    @property
    def kernel(self):
        """The full kernel U S Vᵀ in the shape of the equivalent EinsumDense's."""
        matrix = ops.matmul(ops.matmul(self.u, self.s), ops.transpose(self.v))
        grouped = ops.reshape(matrix, (*self._in_dims, *self._out_dims))
        return ops.transpose(grouped, self._plan["inverse"])

    def _apply_kernel(self, inputs, u, s_vt):
        u = ops.reshape(u, (*self._in_dims, self.max_rank))
        s_vt = ops.reshape(s_vt, (self.max_rank, *self._out_dims))
        hidden = ops.einsum(self._plan["first"], inputs, u)
        return ops.einsum(self._plan["second"], hidden, s_vt)

    def compute_output_shape(self, input_shape):
        return einsum_dense_shapes(self.equation, self.bias_axes, input_shape, self.partial_output_shape)[2]

    def exported_layers(self, rank):
        """The two ``keras.layers.EinsumDense`` that compute this layer at ``rank``
        (x U_r, then (S_r V_rᵀ) + b with the activation); their kernels are
        U_r and S_r V_rᵀ reshaped."""
        hidden_shape = [*self._hidden_sizes, rank]
        return [
            keras.layers.EinsumDense(self._plan["first"], hidden_shape, name=f"{self.name}_u"),
            keras.layers.EinsumDense(self._plan["second"], self.partial_output_shape, bias_axes=self.bias_axes,
                                     activation=keras.activations.serialize(self.activation),
                                     name=f"{self.name}_sv"),
        ]

    def multiply_adds(self, rank=None, input_shape=None):
        """Multiply-adds per sample of the dense and of the rank-r layer: n_in·n_out
        and r(n_in + n_out) at each output position (the output's axes besides the
        batch and the kernel's own)."""
        rank = self.rank if rank is None else rank
        shape = input_shape or build_input_shape(self)
        if shape is None:
            raise ValueError(f"Layer {self.name!r} is not built; pass `input_shape`.")
        out = self.compute_output_shape(shape)
        positions = int(np.prod([d for d in out[1:] if d is not None])) // self.n_out
        return positions * self.n_in * self.n_out, positions * rank * (self.n_in + self.n_out)

    def get_config(self):
        config = super().get_config()
        config.pop("use_bias")
        return {**config, "equation": self.equation, "output_shape": self.partial_output_shape,
                "bias_axes": self.bias_axes}


def einsum_kernel_matrix(equation, kernel):
    """An EinsumDense kernel (numpy, in the equation's axis order) as the n_in × n_out
    matrix W its low-rank form factorises: contracted axes to rows, produced to columns."""
    plan = _einsum_plan(equation)
    kernel = np.asarray(kernel)
    n_in = int(np.prod([kernel.shape[i] for i in plan["contracted"]]))
    return np.transpose(kernel, plan["order"]).reshape(n_in, -1)


def _einsum_plan(equation):
    """How an EinsumDense equation splits into x·U and ·(S Vᵀ): the kernel's
    contracted and produced axes, the two equations, the axis orders."""
    compact = equation.replace(" ", "")
    try:
        left, output = compact.split("->")
        inputs, kernel = left.split(",")
    except ValueError:
        raise ValueError(f"`equation` must read 'INPUT,KERNEL->OUTPUT', got {equation!r}.") from None
    letters = lambda spec: spec.replace("...", "")  # noqa: E731
    in_letters, out_letters = letters(inputs), letters(output)
    if "..." in kernel or not kernel.isalpha():
        raise ValueError(f"The kernel spec {kernel!r} of {equation!r} must be letters only.")
    contracted = [i for i, c in enumerate(kernel) if c in in_letters and c not in out_letters]
    produced = [i for i, c in enumerate(kernel) if c in out_letters and c not in in_letters]
    shared = [c for c in kernel if c in in_letters and c in out_letters]
    if shared or len(contracted) + len(produced) != len(kernel) or not contracted or not produced:
        why = (f"its axes {''.join(shared)!r} are in the input, the kernel and the output (a weight per "
               "position)" if shared else "every kernel axis must be either contracted with the input or "
               "produced in the output, and there must be one of each")
        raise ValueError(f"EinsumDense equation {equation!r} has no low-rank form: {why}.")
    rank_letter = next(c for c in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if c not in compact)
    kept = "".join(c for c in in_letters if c not in [kernel[i] for i in contracted])
    # The hidden tensor keeps the input's other axes, its ellipsis where the input
    # has it, and the rank axis last before a trailing ellipsis (EinsumDense's forms).
    # EinsumDense takes the sizes of its output's axes but the ellipsis' and the batch
    # (the first letter unless an ellipsis leads).
    left = inputs.startswith("...")
    if left:
        hidden, sized = "..." + kept + rank_letter, kept
    elif inputs.endswith("..."):
        hidden, sized = kept + rank_letter + "...", kept[1:]
    else:
        hidden, sized = kept + rank_letter, kept[1:]
    order = contracted + produced
    return {
        "contracted": contracted,
        "produced": produced,
        "order": order,
        "inverse": [order.index(i) for i in range(len(kernel))],
        "input_letters": in_letters,
        "left_ellipsis": left,
        "hidden_sized": sized,
        "first": f"{inputs},{''.join(kernel[i] for i in contracted)}{rank_letter}->{hidden}",
        "second": f"{hidden},{rank_letter}{''.join(kernel[i] for i in produced)}->{output}",
    }


def _tuple(value, n, name):
    if isinstance(value, (int, np.integer)):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ValueError(f"`{name}` must be a positive int or {n} of them, got {value!r}.")
    return tuple(int(v) for v in value)
