"""NumPy inside a compiled step: the one place that asks the backend for a host call.

``on_host(function, inputs, outputs)`` runs a NumPy function from inside a traced step
(``tf.numpy_function`` on TensorFlow, ``jax.pure_callback`` on JAX) with the BLAS that
NumPy (and SciPy) load kept to one thread while it runs. ``qr`` and ``svd`` are
``keras.ops.qr`` / ``keras.ops.svd``, except on JAX's CPU backend for matrices of 512 rows
or columns or more while SciPy's BLAS runs more than one thread, where they are NumPy's
through ``on_host``.

Why one BLAS thread: OpenBLAS, which NumPy and SciPy wheels bundle, leaves its worker
threads spinning for a while after each call it spreads over them. A compiled train step
that makes such a call every few steps then shares the CPU with those spinning threads
for the steps that follow. On JAX's CPU backend every QR / SVD / Cholesky is such a call
(jaxlib hands LAPACK to SciPy's OpenBLAS): on a 2-core machine, a 1024 × 1024 matrix
product ran 2× slower for some tens of milliseconds after even a 20 × 20 Cholesky, and the
LR layer's thresholding every 10 steps made every step of its model ~1.5× slower
(docs/benchmarks.md, "The LR layer against a plain layer"). The host calls made here
factorize matrices of a few dozen columns, which one thread handles as fast.
``threadpoolctl`` sets the limit for the call's duration only; a user's own NumPy code
keeps its threads (and where a user's thread holds a limit of its own, threadpoolctl
leaves OpenBLAS to it).

Why not always: a step with a host call in it, taken or not, loses JAX's C++ dispatch
(``pxla.MeshExecutable.create_cpp_call`` declines executables with host callbacks) and
each call of it goes through Python, and each host call moves its arrays. Where SciPy's
BLAS — the one jaxlib's LAPACK calls — already runs one thread (``OPENBLAS_NUM_THREADS=1``
or a ``threadpoolctl`` limit around ``fit``), nothing spins and the factorizations stay in
the graph: the LR layer at 1024 features cost 1.13× a plain layer's step in the graph
against 1.26× through the host (docs/benchmarks.md, "The LR layer against a plain layer").
The choice is made when the step is traced.
"""

import contextlib

import keras
import numpy as np

_controller = None


@contextlib.contextmanager
def single_threaded_blas():
    """The BLAS libraries loaded in this process use one thread for the duration."""
    global _controller
    import threadpoolctl

    if _controller is None:  # a scan of the loaded libraries: once
        _controller = threadpoolctl.ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def on_host(function, inputs, outputs):
    """``function(*numpy_inputs)`` → a tuple of arrays of ``outputs``' (shape, dtype), from
    inside a traced step or eagerly, on TensorFlow and JAX; on torch (eager) on the
    tensors' values, as tensors."""

    def run(*arrays):
        with single_threaded_blas():
            results = function(*(np.asarray(a) for a in arrays))
        return tuple(np.asarray(r).astype(keras.backend.standardize_dtype(dtype))
                     for r, (_, dtype) in zip(results, outputs))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        results = tf.numpy_function(run, list(inputs), [dtype for _, dtype in outputs], stateful=False)
        if not isinstance(results, (list, tuple)):  # one output comes back as itself
            results = [results]
        for result, (shape, _) in zip(results, outputs):
            result.set_shape(shape)
        return tuple(results)
    if backend == "torch":
        return tuple(keras.ops.convert_to_tensor(r) for r in run(*(keras.ops.convert_to_numpy(t) for t in inputs)))
    if backend != "jax":
        raise NotImplementedError(f"on_host: no host call on the {backend} backend.")
    import jax

    return jax.pure_callback(run, tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in outputs), *inputs)


# From this many rows or columns a factorization leaves JAX's CPU graph for the host.
# Below it OpenBLAS keeps jaxlib's LAPACK on the calling thread and a host round trip
# costs more than it saves: the LR layer's step, against a plain layer's, in the graph /
# on the host: 1.06× / 1.38× at 64 features, 1.00× / 1.12× at 256, 1.70× / 1.11× at 512
# (2-core CPU, docs/benchmarks.md).
_HOST_FROM = 512


def _lapack_blas_threads():
    """The most threads that the BLAS under jaxlib's CPU LAPACK may run: SciPy's (jaxlib
    calls SciPy's LAPACK); every BLAS loaded where SciPy's cannot be told apart (a shared
    system library)."""
    import os

    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, as jaxlib's first LAPACK call would)
    import threadpoolctl

    libraries = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    scipy_dir = os.path.dirname(os.path.realpath(scipy.__file__))
    own = [info for info in libraries if os.path.realpath(info["filepath"]).startswith(scipy_dir)]
    return max((info["num_threads"] for info in own or libraries), default=1)


def _factorize_on_host(x):
    """A factorization of ``x`` on JAX's CPU backend, ``x`` large enough and LAPACK's BLAS
    on more than one thread (see above)."""
    if keras.backend.backend() != "jax" or max(x.shape) < _HOST_FROM:
        return False
    import jax

    return jax.default_backend() == "cpu" and _lapack_blas_threads() > 1


def qr(x):
    """``keras.ops.qr(x)`` (reduced) of a matrix of known shape."""
    if not _factorize_on_host(x):
        return keras.ops.qr(x)
    m, n = x.shape
    k = min(m, n)
    return on_host(np.linalg.qr, [x], [((m, k), x.dtype), ((k, n), x.dtype)])


def svd(x):
    """``keras.ops.svd(x, full_matrices=False)`` of a matrix of known shape."""
    if not _factorize_on_host(x):
        return keras.ops.svd(x, full_matrices=False)
    m, n = x.shape
    k = min(m, n)
    return on_host(lambda a: np.linalg.svd(a, full_matrices=False), [x],
                   [((m, k), x.dtype), ((k,), x.dtype), ((k, n), x.dtype)])
