"""Conv1D and Conv2D layers whose kernel is held as W = U S Vᵀ (the kernel reshaped to
(k·k·c_in) × c_out), trained by DLRT; see ``dynamic_low_rank``."""


import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import build_input_shape, compute_conv_output_shape
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase, _check_positive_int


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

    keras_argument_names = ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias")

    def _keras_arguments(self):
        return dict(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
                    dilation_rate=self.dilation_rate, use_bias=self.use_bias)

    def exported_layers(self, rank):
        first = {**self._keras_arguments(), "filters": rank, "use_bias": False}
        return [self.keras_class(**first, name=f"{self.name}_u", dtype=self.dtype_policy),
                self.keras_class(self.filters, 1, activation=keras.activations.serialize(self.activation),
                                 use_bias=self.use_bias, name=f"{self.name}_sv", dtype=self.dtype_policy)]

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
    1×1 map S Vᵀ — the matrix form of CondLR (keras_lowrank/methods.md §2): one ordinary
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

    Input shape:
        4D tensor ``(batch_size, rows, cols, channels)`` (channels last), as Conv2D's.

    Output shape:
        4D tensor ``(batch_size, new_rows, new_cols, filters)``, as Conv2D's.

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

    Input shape:
        3D tensor ``(batch_size, steps, channels)`` (channels last), as Conv1D's.

    Output shape:
        3D tensor ``(batch_size, new_steps, filters)``, as Conv1D's.

    Examples:

        >>> layer = DynamicLowRankConv1D(8, 5, padding="same", max_rank=4)
        >>> y = layer(np.zeros((2, 40, 3), "float32"))
        >>> tuple(y.shape), tuple(layer.kernel.shape)  # the equivalent Conv1D kernel
        ((2, 40, 8), (5, 3, 8))
    """

    spatial = 1
    keras_class = keras.layers.Conv1D


def _tuple(value, n, name):
    if isinstance(value, (int, np.integer)):
        value = (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in value):
        raise ValueError(f"`{name}` must be a positive int or {n} of them, got {value!r}.")
    return tuple(int(v) for v in value)
