import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Every test runs on every backend, except those marked ``tf_only(reason)``,
    which are skipped with their reason on the others, and those marked
    ``slow_on_jax(reason)``, which JAX runs only with KERAS_LOWRANK_SLOW_JAX=1
    (``make test-jax-slow``)."""
    backend = keras.backend.backend()
    slow_jax = os.environ.get("KERAS_LOWRANK_SLOW_JAX") == "1"
    for item in items:
        marker = item.get_closest_marker("tf_only")
        if marker is not None and backend != "tensorflow":
            reason = marker.args[0] if marker.args else "TensorFlow only"
            item.add_marker(pytest.mark.skip(reason=f"needs the TensorFlow backend: {reason}"))
        marker = item.get_closest_marker("slow_on_jax")
        if marker is not None and backend == "jax" and not slow_jax:
            item.add_marker(pytest.mark.skip(
                reason=f"slow on JAX ({marker.args[0]}); run with make test-jax-slow"))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


@pytest.fixture(autouse=True)
def _exact_float32(request):
    """GPUs multiply float32 in TF32 by default (≈ 1e-3 relative error); the tests
    compare with float64 numpy at ~1e-5, so they run in full float32 — except those
    marked ``own_precision``, whose code must set it itself (keras_lowrank.precision).
    No effect on CPUs."""
    if request.node.get_closest_marker("own_precision"):
        yield
        return
    from keras_lowrank.precision import float32_matmuls

    with float32_matmuls():
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


_WATCHERS = []  # the lists of jax_compiles blocks now open
_LISTENING = []  # one jax.monitoring listener per process (they cannot be removed)


def _on_jax_event(event, seconds, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        for seen in _WATCHERS:
            seen.append(event)


@pytest.fixture
def jax_compiles():
    """``with jax_compiles() as seen:`` collects one entry per XLA program JAX compiles
    inside the block (eager keras.ops on JAX compile one per op and shape); on other
    backends ``seen`` stays empty."""
    @contextlib.contextmanager
    def watch():
        seen = []
        if keras.backend.backend() != "jax":
            yield seen
            return
        if not _LISTENING:
            import jax

            jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
            _LISTENING.append(True)
        _WATCHERS.append(seen)
        try:
            yield seen
        finally:
            _WATCHERS.remove(seen)

    return watch
