"""EinsumDense layers whose kernel is held as W = U S Vᵀ (the kernel as one matrix,
contracted axes × output axes), trained by DLRT; see ``dynamic_low_rank``."""


import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import build_input_shape, einsum_dense_shapes
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase


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

    Input shape:
        the tensor the equation's first operand describes, as EinsumDense's.

    Output shape:
        ``(batch_size,) + output_shape`` (with the ellipsis' axes), as EinsumDense's.

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

    keras_argument_names = ("equation", "output_shape", "bias_axes")

    def _keras_arguments(self):
        return dict(equation=self.equation, output_shape=self.partial_output_shape, bias_axes=self.bias_axes)

    def exported_layers(self, rank):
        """The two ``keras.layers.EinsumDense`` that compute this layer at ``rank``
        (x U_r, then (S_r V_rᵀ) + b with the activation); their kernels are
        U_r and S_r V_rᵀ reshaped."""
        hidden_shape = [*self._hidden_sizes, rank]
        return [
            keras.layers.EinsumDense(self._plan["first"], hidden_shape, name=f"{self.name}_u",
                                     dtype=self.dtype_policy),
            keras.layers.EinsumDense(self._plan["second"], self.partial_output_shape, bias_axes=self.bias_axes,
                                     activation=keras.activations.serialize(self.activation),
                                     name=f"{self.name}_sv", dtype=self.dtype_policy),
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
