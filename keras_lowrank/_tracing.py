"""The backend-specific questions the layers ask: whether a tensor holds values now or
is being traced (their ``rank`` is read on the host, which a trace cannot do), and how
their variables are laid out in memory on torch."""

import keras
import numpy as np


def holds_values(x):
    """True for an eager tensor, variable or array; False inside a ``tf.function``
    graph, for a JAX tracer, and for a torch "meta" tensor of Keras' shape inference."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and not tf.is_symbolic_tensor(x)
    if backend == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if backend == "torch":
        return getattr(getattr(x, "device", None), "type", None) != "meta"
    return True


def concrete(*tensors):
    """The values of ``tensors`` as NumPy arrays, or None where any is being traced
    (a NumPy array or Python number is always concrete)."""
    if not all(isinstance(t, (np.ndarray, np.generic, int, float)) or holds_values(t) for t in tensors):
        return None
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in tensors]


def row_major(initializer):
    """``initializer`` whose values are stored row-major (C order) on torch; unchanged on
    other backends, whose tensors have no strides.

    Why: Keras' torch variables keep the memory layout of their initial value, and
    ``keras.ops.qr`` on torch (LAPACK's column-major Q) gives a transposed layout — the
    ``"orthogonal"`` initializer's, and that of factors built from a QR or an SVD in
    NumPy. Gradients and optimizer slots are row-major, so every elementwise update then
    mixes layouts: the LR layer's 1024 × 1024 Adam updates ran ~10× slower on a 2-core
    CPU, its step ~1.4× a plain layer's (docs/benchmarks.md)."""
    if keras.backend.backend() != "torch":
        return initializer
    initializer = keras.initializers.get(initializer)

    def initialize(shape, dtype=None):
        return keras.ops.convert_to_tensor(initializer(shape, dtype=dtype)).contiguous()

    return initialize
