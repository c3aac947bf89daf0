"""DLRT's augment and truncate of every low-rank layer in one host callback, on a CPU
(JAX beyond a few layers; TensorFlow without XLA): see ``optimizers.DLRT._step``, whose
``_integrator_mode`` says where the integrator runs and why."""

import math

from keras import backend, ops

from keras_lowrank._host import on_host
from keras_lowrank._low_rank import host_factorization as host


def integrate_on_host(layers, augmenting):
    """Augments (``augmenting``) or truncates every layer, carrying S's slots, in one
    host callback (``_host.on_host``, one BLAS thread): ``_low_rank.host_factorization``'s
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
        return results

    if backend.backend() != "jax":
        return on_host(integrate, [augmenting, *inputs], outputs)
    # On JAX the inputs cross as one flat array per dtype: JAX puts each argument of a host
    # callback on the device on its own (~25 µs each); a callback that computes nothing, with
    # DenseNet121's 960 arrays in and 600 out, took 43 ms a call, 13 ms with them flat
    # (benchmarks/host_callback_transport.py). Its results stay apart (slicing one flat
    # result in the step added 5 s to the first call), and TensorFlow's arguments too (its
    # ``numpy_function`` takes them at little cost; flat, DLRT's first call took 5 s more).
    shapes = [tuple(t.shape) for t in inputs]
    packs = {}
    for index, tensor in enumerate(inputs):
        packs.setdefault(backend.standardize_dtype(tensor.dtype), []).append(index)

    def unpacked(augment_now, *flat_arrays):
        arrays = [None] * len(shapes)
        for indices, values in zip(packs.values(), flat_arrays):
            start = 0
            for i in indices:
                size = math.prod(shapes[i])
                arrays[i] = values[start:start + size].reshape(shapes[i])
                start += size
        return integrate(augment_now, *arrays)

    flat = [ops.concatenate([ops.reshape(inputs[i], (-1,)) for i in indices]) for indices in packs.values()]
    return on_host(unpacked, [augmenting, *flat], outputs)
