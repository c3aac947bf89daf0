"""``keras_lowrank._host``: NumPy inside a compiled step on one BLAS thread, and the QR /
SVD that the LR layer's thresholding calls (NumPy's on JAX's CPU backend while LAPACK's
BLAS runs several threads)."""

import keras
import numpy as np
import pytest
import threadpoolctl

from keras_lowrank import _host


def blas_threads():
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


def compiled(function):
    """``function`` traced as Keras' trainers trace a step on this backend."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    import jax

    return jax.jit(function)


def test_single_threaded_blas_limits_for_the_duration_only():
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before and all(n == 2 for n in before)  # NumPy's own BLAS at least
        with _host.single_threaded_blas():
            assert all(n == 1 for n in blas_threads())
        assert blas_threads() == before


def test_a_host_call_in_a_compiled_step_runs_on_one_blas_thread():
    seen = []

    def on_numpy(x):
        seen.append(blas_threads())
        return [x @ x.T, np.float64(x.sum())]

    if max(blas_threads()) < 2:  # (no outer limit here: the call may run on another thread,
        pytest.skip("BLAS runs one thread on this machine anyway")  # and OpenBLAS obeys one thread's limits)
    x = np.arange(12, dtype="float32").reshape(3, 4)
    step = compiled(lambda x: _host.on_host(on_numpy, [x], [((3, 3), "float32"), ((), "float32")]))
    product, total = step(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(product), x @ x.T)
    assert keras.ops.convert_to_numpy(total).dtype == np.float32 and float(total) == 66.0
    assert seen and all(n == 1 for threads in seen for n in threads)


@pytest.mark.parametrize("blas_threads_limit", [1, 2])
@pytest.mark.parametrize("shape", [(600, 4), (4, 600), (9, 4)])
def test_qr_and_svd_factorize_in_a_compiled_step(shape, blas_threads_limit, monkeypatch):
    if blas_threads_limit > 1 and max(blas_threads()) < 2:
        pytest.skip("BLAS runs one thread on this machine anyway")
    calls = []
    for name in ("qr", "svd"):
        original = getattr(np.linalg, name)
        monkeypatch.setattr(np.linalg, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    with threadpoolctl.threadpool_limits(limits=blas_threads_limit, user_api="blas"):  # while tracing
        # (new functions: JAX would reuse a trace of the same function made under another limit)
        q, r = (keras.ops.convert_to_numpy(t) for t in compiled(lambda a: _host.qr(a))(x))
        u, s, vt = (keras.ops.convert_to_numpy(t) for t in compiled(lambda a: _host.svd(a))(x))
    factorizations, k = list(calls), min(shape)
    assert q.shape == (shape[0], k) and r.shape == (k, shape[1]) and np.allclose(np.triu(r), r)
    assert u.shape == (shape[0], k) and s.shape == (k,) and vt.shape == (k, shape[1])
    # float32 round-off: 1e-5 is ~100 ulps of the largest entries (|x| ≲ 4.5).
    np.testing.assert_allclose(q @ r, x, atol=1e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-5)
    np.testing.assert_allclose((u * s) @ vt, x, atol=1e-5)
    np.testing.assert_allclose(s, np.linalg.svd(x.astype("float64"), compute_uv=False), rtol=1e-5)
    # Smaller ones stay in the graph (see _host._HOST_FROM), and all do where LAPACK's BLAS
    # runs one thread: nothing then spins after the call, and a host call costs the step.
    on_host = (keras.backend.backend() == "jax" and __import__("jax").default_backend() == "cpu"
               and max(shape) >= 512 and blas_threads_limit > 1)
    assert factorizations == (["qr", "svd"] if on_host else [])
