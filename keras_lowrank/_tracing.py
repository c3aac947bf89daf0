"""Whether a tensor holds values now or is being traced: the one backend-specific
question the layers ask (their ``rank`` is read on the host, which a trace cannot do)."""

import keras


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
