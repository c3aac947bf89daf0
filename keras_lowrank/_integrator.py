"""Where DLRT's augment and truncate run, and the host callback that runs them on a CPU
(``DLRT._step`` chooses; the formulas are ``factorization``'s and ``_host_factorization``'s)."""

import numpy as np
from keras import backend

from keras_lowrank import _host_factorization as host
from keras_lowrank._keras_compat import tensorflow_host_callbacks_allowed


def _integrator_mode():
    """Where DLRT's augment and truncate run (see ``DLRT._step``): ``"host"`` (NumPy in
    one host callback: JAX on the CPU, TensorFlow on the CPU without XLA), ``"vmap"``
    (alike layers batched: JAX on a GPU/TPU) or None (each layer its own ops:
    TensorFlow on a GPU or under ``jit_compile=True``, torch)."""
    if backend.backend() == "tensorflow":
        return "host" if tensorflow_host_callbacks_allowed() else None
    if backend.backend() != "jax":
        return None
    import jax

    return "host" if jax.default_backend() == "cpu" else "vmap"


def _integrate_on_host(layers, augmenting):
    """Augments (``augmenting``) or truncates every layer, carrying S's slots, in one
    host callback (``jax.pure_callback``, ``tf.numpy_function``): ``_host_factorization``'s
    float64 NumPy. Returns what ``keep_all`` in ``DLRT._step`` returns, in the same dtypes.

    Why on the host, on a CPU: XLA:CPU compiles each layer's (or each group
    of alike layers') QR / SVD / basis-change code into kernels of their own — seconds
    added to the first ``fit`` call per few dozen low-rank layers (docs/benchmarks.md) —
    and TensorFlow traces and optimises them as graph nodes of their own (a DenseNet121's
    120 layers: a third of DLRT's first call), where NumPy runs the same formulas at
    once, on matrices of r_max columns that a CPU factorizes in microseconds. Batched in
    XLA instead (``vectorized_map``), a LAPACK call
    waits on tasks of XLA's intra-op thread pool from a thread of that pool, and two such
    calls at once can hold every thread of a small pool: VGG16's DLRT step hung for good
    on 2 cores (jaxlib 0.10.2)."""
    inputs = [t for _, gu, gv, u0, s0, s_now, v0, moments, _ in layers
              for t in (gu, gv, u0, s0, s_now, v0, *moments)]
    outputs = [(tuple(t.shape), t.dtype)
               for _, _, _, u0, _, s_now, v0, moments, _ in layers for t in (u0, s_now, v0, *moments)]
    settings = [(layer.max_rank, layer.tol, layer.min_rank, kinds) for layer, *_, kinds in layers]

    def integrate(augment_now, *arrays):
        results, arrays = [], list(arrays)
        for max_rank, tol, min_rank, kinds in settings:
            (gu, gv, u0, s0, s_now, v0), moments = arrays[:6], arrays[6:6 + len(kinds)]
            arrays = arrays[6 + len(kinds):]
            new = (host.augment(u0, s0, v0, gu, gv, max_rank) if augment_now
                   else host.truncate(u0, s_now, v0, tol, min_rank))
            a, b = host.basis_change(u0, v0, new[0], new[2])
            results += [*new, *(host.carry_slot(m, a, b, kind) for m, kind in zip(moments, kinds))]
        return tuple(np.asarray(r).astype(backend.standardize_dtype(dtype)) for r, (_, dtype) in zip(results, outputs))

    if backend.backend() == "tensorflow":
        import tensorflow as tf

        results = tf.numpy_function(integrate, [augmenting, *inputs], [dtype for _, dtype in outputs],
                                    stateful=False)
        for result, (shape, _) in zip(results, outputs):
            result.set_shape(shape)
        return tuple(results)
    import jax

    return jax.pure_callback(integrate, tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in outputs),
                             augmenting, *inputs)
