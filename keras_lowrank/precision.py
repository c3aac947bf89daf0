"""Exact float32 matrix products where results are held to float64 math.

GPUs multiply float32 matrices in TF32 by default (JAX's default matmul precision,
TensorFlow's ``enable_tensor_float_32_execution``): a 10-bit mantissa, relative
errors ≈ 1e-3. That is fine for a model's forward pass, not for estimators checked
against float64 numpy at 1e-6 (CKA, class selectivity) nor for the bases of DLRT's
augment / truncate / basis-change steps. Measured on an H100 with JAX's defaults:
linear CKA off by 2.6e-5 and selectivity indices by 7e-5 from float64 numpy, DLRT's
augmentation moved W = U S Vᵀ by 2.3e-4 (it must keep it) and its truncation missed
the best rank-r approximation by 5e-4; with this module all within 1e-6 / 1e-5
(tests/test_cka.py, test_selectivity.py, test_dynamic_low_rank_layers.py there).

``float32_matmuls()`` is a context manager and a decorator (Keras has no precision
setting, so each backend's own switch is used):

- JAX: ``jax.default_matmul_precision("highest")``; inside a traced function too
  (the precision is fixed on each product as it is traced).
- TensorFlow: TF32 off while it runs (a process-wide switch, restored after):
  effective for eager code and for compiled functions called inside it, not for
  ops traced inside a ``tf.function`` that runs later.
- torch: ``torch.set_float32_matmul_precision("highest")`` and cuDNN's TF32 off (on
  by default for convolutions) while it runs, both restored after.
- CPUs (which have no TF32): no effect.
"""

import contextlib

import keras

__all__ = ["float32_matmuls"]


@contextlib.contextmanager
def float32_matmuls():
    """Full float32 matrix products (no TF32) for the duration; see the module docstring.

    A context manager and a decorator (``contextlib.contextmanager``); no effect on CPUs.

    Returns:
        a context manager.

    Examples:

        >>> import numpy as np
        >>> with float32_matmuls():
        ...     product = keras.ops.matmul(np.eye(2, dtype="float32"), np.full((2, 2), 1 / 3, "float32"))
        >>> bool(float(product[0, 0]) == np.float32(1 / 3))
        True
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
    elif backend == "tensorflow":
        import tensorflow as tf

        enabled = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(enabled)
    elif backend == "torch":
        import torch

        precision, convolutions = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False  # on by default for convolutions
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cudnn.allow_tf32 = convolutions
    else:
        yield
