"""Gaussian noise through the one noise API: ``GaussianNoise`` / ``evaluate_robustness``."""

import keras
import numpy as np
import pytest

from keras_lowrank.robustness import GaussianNoise, evaluate_robustness

pytestmark = pytest.mark.torch  # in the torch half too (make test-torch)


def _threshold_model():
    """Class 1 iff the input exceeds 0.5: at x = 0.5 the prediction is the noise's sign."""
    inputs = keras.Input((1,))
    margin = inputs - 0.5
    return keras.Model(inputs, keras.ops.concatenate([-margin, margin], axis=-1))


def test_noise_rows_against_direct_computation(rng):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    x = rng.uniform(size=(50, 6)).astype("float32")
    y = rng.integers(0, 3, size=50)
    clean = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    report = evaluate_robustness(model, (x, y), noise_sigmas=[0.0, 0.5], large_eps=None, seed=3)
    assert report.accuracy("gaussian", 0.0) == pytest.approx(clean, abs=1e-6)
    again = evaluate_robustness(model, (x, y), noise_sigmas=[0.5], large_eps=None, seed=3)
    assert again.accuracy("gaussian", 0.5) == report.accuracy("gaussian", 0.5)


def test_noise_is_standard_normal_and_common_to_every_sigma():
    n = 2000
    x = np.full((n, 1), 0.5, "float32")
    y = np.ones(n, "int64")
    report = evaluate_robustness(_threshold_model(), (x, y), noise_sigmas=[0.1, 1.0], clip=None,
                                 large_eps=None, seed=0)
    # P(ε > 0) = 1/2; four standard errors of a binomial proportion.
    assert abs(report.accuracy("gaussian", 0.1) - 0.5) < 4 * np.sqrt(0.25 / n)
    # Common random numbers: the same ε for each σ, so the same signs.
    assert report.accuracy("gaussian", 0.1) == report.accuracy("gaussian", 1.0)


def test_clipping_is_applied():
    # A model that predicts class 1 iff any input exceeds 1.001: clipping to [0, 1] forbids it.
    inputs = keras.Input((4,))
    over = keras.ops.max(inputs, axis=-1, keepdims=True) - 1.001
    model = keras.Model(inputs, keras.ops.concatenate([-over, over], axis=-1))
    x = np.full((20, 4), 0.99, "float32")
    y = np.zeros(20, "int64")
    clipped = evaluate_robustness(model, (x, y), noise_sigmas=[1.0], large_eps=None)
    assert clipped.accuracy("gaussian", 1.0) == 1.0
    free = evaluate_robustness(model, (x, y), noise_sigmas=[1.0], clip=None, large_eps=None)
    assert free.accuracy("gaussian", 1.0) < 0.5
    noisy = keras.ops.convert_to_numpy(GaussianNoise(1.0, seed=0)(None, x))
    assert float(np.min(noisy)) >= 0.0 and float(np.max(noisy)) <= 1.0


def test_bad_sigma_is_refused_before_any_evaluation():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`noise_sigmas`"):
        evaluate_robustness(model, (np.zeros((2, 2)), np.zeros(2)), noise_sigmas=[-0.1])
    with pytest.raises(ValueError, match="`sigma`"):
        GaussianNoise(float("nan"))
