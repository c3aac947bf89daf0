"""Whether a tensor holds values now or is being traced: the one backend-specific
question the layers ask (their ``rank`` is read on the host, which a trace cannot do)."""

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
