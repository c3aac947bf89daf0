"""``keras_lowrank._host``: NumPy inside a compiled step on one BLAS thread, and the QR /
SVD that the LR layer's thresholding calls (NumPy's on JAX's CPU backend)."""

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


@pytest.mark.parametrize("shape", [(600, 4), (4, 600), (9, 4)])
def test_qr_and_svd_factorize_in_a_compiled_step(shape, monkeypatch):
    calls = []
    for name in ("qr", "svd"):
        original = getattr(np.linalg, name)
        monkeypatch.setattr(np.linalg, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    q, r = (keras.ops.convert_to_numpy(t) for t in compiled(_host.qr)(x))
    u, s, vt = (keras.ops.convert_to_numpy(t) for t in compiled(_host.svd)(x))
    factorizations, k = list(calls), min(shape)
    assert q.shape == (shape[0], k) and r.shape == (k, shape[1]) and np.allclose(np.triu(r), r)
    assert u.shape == (shape[0], k) and s.shape == (k,) and vt.shape == (k, shape[1])
    # float32 round-off: 1e-5 is ~100 ulps of the largest entries (|x| ≲ 4.5).
    np.testing.assert_allclose(q @ r, x, atol=1e-5)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-5)
    np.testing.assert_allclose((u * s) @ vt, x, atol=1e-5)
    np.testing.assert_allclose(s, np.linalg.svd(x.astype("float64"), compute_uv=False), rtol=1e-5)
    on_host = (keras.backend.backend() == "jax" and __import__("jax").default_backend() == "cpu"
               and max(shape) >= 512)  # smaller ones stay in the graph (see _host._HOST_FROM)
    assert factorizations == (["qr", "svd"] if on_host else [])
