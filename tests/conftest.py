import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
