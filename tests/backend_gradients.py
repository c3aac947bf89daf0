"""The gradient of a scalar function of one input, taken by the backend's own
autodiff (tf.GradientTape, jax.grad, torch.autograd): the tests' independent route to
gradients the library computes or must keep finite."""

import keras
import numpy as np


def input_gradient(function, x):
    """d function(x) / dx as numpy, ``function`` written with ``keras.ops``."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = function(x)
        return tape.gradient(value, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(function)(x))
    x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    function(x).backward()
    return x.grad.cpu().numpy()
