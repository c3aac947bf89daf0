"""Data-aware factorisation: each kernel factorised to keep its *outputs* on the
user's data, not its weights (the activation-whitened, truncation-aware SVD of
SVD-LLM, Wang et al., ICLR 2025, https://arxiv.org/abs/2403.07378; keras_lowrank/methods.md,
"Data-aware factorisation").

For a layer whose kernel matrix W (n_in × n_out) multiplies rows a (a Dense's input
features, a convolution's patches, an EinsumDense's contracted axes), the second
moment C = E[aᵀa] of the calibration rows turns the output error into a weighted
weight error: E‖a(W − Ŵ)‖² = ‖C^½ (W − Ŵ)‖²_F. Its best rank-r Ŵ is
C^-½ · (best rank-r approximation of C^½ W), and the singular values σ of C^½ W are the
output errors themselves (Σ_{k>r} σ_k²). Written here: neither Keras nor NumPy has it.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import replaced_attribute
from keras_lowrank.analysis._batches import batch_length, iterate_inputs, take
from keras_lowrank.layers.dynamic_low_rank_einsum import _einsum_plan

#: relative damping added to C's diagonal: C + δ·tr(C)/n·I keeps C^-½ finite where the
#: calibration rows span fewer than n_in directions (rank-deficient inputs)
DAMPING = 1e-6


def rows_of(layer, inputs):
    """The rows ``layer``'s kernel matrix multiplies, for a batch of its inputs:
    (rows, n_in) float64 numpy — a Dense's last axis, a convolution's patches (in the
    kernel's (kh, kw, c_in) order), an EinsumDense's contracted axes (in its kernel's order)."""
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        kernel_shape = tuple(layer.kernel.shape[:-1])
        n_in = int(np.prod(kernel_shape))
        # a convolution whose kernel is the identity on (kh, kw, c_in) returns each
        # position's patch: the layer's own strides, padding and dilation, exactly
        eye = np.eye(n_in, dtype="float32").reshape(kernel_shape + (n_in,))
        patches = ops.conv(ops.convert_to_tensor(inputs, "float32"), eye, strides=layer.strides,
                           padding=layer.padding, dilation_rate=layer.dilation_rate)
        return np.asarray(ops.convert_to_numpy(patches), "float64").reshape(-1, n_in)
    if isinstance(layer, keras.layers.EinsumDense):
        plan = _einsum_plan(layer.equation)
        inputs_spec, kernel_spec = layer.equation.replace(" ", "").split("->")[0].split(",")
        contracted = "".join(kernel_spec[i] for i in plan["contracted"])
        sizes = [int(layer.kernel.shape[i]) for i in plan["contracted"]]
        n_in = int(np.prod(sizes))
        kept = "".join(c for c in inputs_spec.replace("...", "") if c not in contracted)
        letter = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in layer.equation)
        equation = f"{inputs_spec},{contracted}{letter}->{'...' if '...' in inputs_spec else ''}{kept}{letter}"
        eye = np.eye(n_in).reshape(sizes + [n_in])
        return np.einsum(equation, np.asarray(inputs, "float64"), eye).reshape(-1, n_in)
    inputs = np.asarray(inputs, "float64")
    return inputs.reshape(-1, inputs.shape[-1])


@contextlib.contextmanager
def inputs_seen(layers, record):
    """Inside the block each of ``layers`` hands its input, as numpy, to
    ``record(layer, inputs)`` at every call before computing (its ``call`` wrapped;
    restored after): what a layer receives anywhere in a model, nested or custom."""
    def recording(layer):
        original = layer.call

        def call(inputs, *args, **kwargs):
            record(layer, np.asarray(ops.convert_to_numpy(inputs)))
            return original(inputs, *args, **kwargs)

        return call

    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(replaced_attribute(layer, "call", recording(layer)))
        yield


def second_moments(model, layers, data, examples=256):
    """{id(layer): C = mean over calibration rows of aᵀa (n_in × n_in, float64)} for
    ``layers`` of ``model`` (at any depth: nested models, custom layers), from the first
    ``examples`` inputs of ``data`` (arrays, a dict of arrays, an (x, y) pair, a
    tf.data.Dataset or a PyDataset). The model runs eagerly with each layer's ``call``
    wrapped to collect what it is given (every call: a layer used twice sees both inputs)."""
    sums = {id(layer): 0.0 for layer in layers}
    counts = dict.fromkeys(sums, 0)

    def record(layer, inputs):
        rows = rows_of(layer, inputs)
        sums[id(layer)] = sums[id(layer)] + rows.T @ rows
        counts[id(layer)] += len(rows)

    seen = 0
    with inputs_seen(layers, record):
        for x in iterate_inputs(data, batch_size=64):
            x = take(x, examples - seen)
            model(x, training=False)
            seen += batch_length(x)
            if seen >= examples:
                break
    if not seen:
        raise ValueError("`data` holds no examples to calibrate on.")
    return {key: sums[key] / counts[key] for key in sums if counts[key]}


def whitened_svd(kernel, moment, damping=DAMPING):
    """The factorisation of ``kernel`` (n_in × n_out) that minimises the output error
    on rows of second moment ``moment``, in the form ``to_low_rank`` stores:

    Returns:
        (factor, sigma) where ``factor(r)`` gives (U, s, V) of the best rank-r kernel for
        the data — U (n_in × r) and V (n_out × r) orthonormal, s (r,) positive, W_r = U
        diag(s) Vᵀ — and ``sigma`` the singular values of C^½ W (descending): keeping r
        of them leaves E‖a(W − W_r)‖² = Σ_{k>r} σ_k².
    """
    w = np.asarray(kernel, "float64")
    c = np.asarray(moment, "float64")
    n = len(c)
    shift = damping * max(np.trace(c) / n, np.finfo("float64").tiny)
    values, vectors = np.linalg.eigh((c + c.T) / 2 + shift * np.eye(n))
    values = np.maximum(values, shift)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse_root = (vectors / np.sqrt(values)) @ vectors.T
    p, sigma, rt = np.linalg.svd(root @ w, full_matrices=False)

    def factor(r):
        q, triangle = np.linalg.qr(inverse_root @ (p[:, :r] * sigma[:r]))
        a, s, bt = np.linalg.svd(triangle)  # re-diagonalised: U, V orthonormal, s positive
        return q @ a, s, rt[:r].T @ bt.T

    return factor, sigma
