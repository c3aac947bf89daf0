import keras
import numpy as np
import pytest

from keras_lowrank.robustness import gaussian_noise_accuracy

pytestmark = pytest.mark.backend_neutral


def batches(x, y, size=16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def test_noise_accuracy_against_direct_computation(rng):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    x = rng.uniform(size=(50, 6)).astype("float32")
    y = rng.integers(0, 3, size=50)
    clean_accuracy = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    result = gaussian_noise_accuracy(model, batches(x, y), [0.0, 0.5], seed=3)
    assert result[0.0] == pytest.approx(clean_accuracy)
    assert result == gaussian_noise_accuracy(model, batches(x, y), [0.0, 0.5], seed=3)


def test_clipping_is_applied(rng):
    # A model that predicts class 1 iff any input exceeds 1: clipping forbids it.
    inputs = keras.Input((4,))
    over = keras.ops.max(inputs, axis=-1, keepdims=True) - 1.0
    model = keras.Model(inputs, keras.ops.concatenate([-over, over], axis=-1))
    x = np.full((20, 4), 0.99, "float32")
    y = np.zeros(20, "int64")
    assert gaussian_noise_accuracy(model, batches(x, y), [1.0])[1.0] == 1.0
    assert gaussian_noise_accuracy(model, batches(x, y), [1.0], clip=None)[1.0] < 0.5


def test_bad_sigma_and_data():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`sigmas`"):
        gaussian_noise_accuracy(model, [], [-0.1])
    with pytest.raises(ValueError, match="`data`"):
        gaussian_noise_accuracy(model, [np.zeros((2, 2))], [0.1])
