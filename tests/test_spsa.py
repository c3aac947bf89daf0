"""The black-box SPSA attack: its gradient estimate against autodiff, its
strength against PGD, and the report check that it exposes gradient masking."""

import keras
import numpy as np
import pytest
from models import digits_cnn as small_cnn

from keras_lowrank import data
from keras_lowrank.robustness import PGD, SPSA, evaluate_robustness

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), -1) == y))


def test_one_step_moves_along_the_sign_of_the_true_gradient(rng):
    """With many samples, one SPSA step's direction agrees with sign(∇ₓ loss)
    computed by autodiff (FGSM with the same ε) on most coordinates."""
    from keras_lowrank.robustness import FGSM

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(3)])
    x = rng.uniform(0.3, 0.7, size=(8, 20)).astype("float32")
    y = rng.integers(0, 3, size=8)
    eps = 0.05
    spsa = keras.ops.convert_to_numpy(
        SPSA(eps, steps=1, samples=2000, delta=1e-3, step_size=eps, seed=0)(model, x, y))
    fgsm = keras.ops.convert_to_numpy(FGSM(eps)(model, x, y))
    agreement = np.mean(np.sign(spsa - x) == np.sign(fgsm - x))
    assert agreement > 0.9, agreement
    assert np.abs(spsa - x).max() <= eps + 1e-6


def test_errors():
    for kwargs, name in (({"eps": -1}, "eps"), ({"eps": 0.1, "steps": 0}, "steps"),
                         ({"eps": 0.1, "samples": 1.5}, "samples"),
                         ({"eps": 0.1, "delta": 0}, "delta")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            SPSA(**kwargs)


def _dataset(x, y):
    tf = pytest.importorskip("tensorflow")  # tf.data input; a JAX-only install skips

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(100)


@pytest.mark.slow
def test_spsa_is_weaker_than_pgd_on_a_plain_model_and_stronger_on_a_masked_one():
    x, y = data.load_digits_arrays("train")
    x_test, y_test = data.load_digits_arrays("test")
    x_test, y_test = x_test[:200], y_test[:200]
    keras.utils.set_random_seed(0)
    plain = small_cnn()
    plain.compile("adam", CE)
    plain.fit(x, y, epochs=5, batch_size=64, verbose=0)
    report = evaluate_robustness(plain, _dataset(x_test, y_test),
                                 attacks=[PGD(0.1, steps=10, seed=0)], black_box=True,
                                 large_eps=None)
    spsa = report.accuracy("SPSA", 0.1)
    assert spsa < report.clean_accuracy - 0.1  # the attack works without gradients
    assert all(c.passed for c in report.checks), report
    # Rounding the input kills input gradients: PGD cannot move, SPSA can.
    inputs = keras.Input((8, 8, 1))
    rounded = keras.layers.Lambda(lambda t: keras.ops.round(t * 4) / 4)(inputs)
    masked = keras.Model(inputs, plain(rounded))
    report = evaluate_robustness(masked, _dataset(x_test, y_test),
                                 attacks=[PGD(0.2, steps=10, seed=0)], black_box=True,
                                 large_eps=None)
    failed = [c for c in report.checks if not c.passed]
    assert [c.name for c in failed] == ["black-box SPSA not stronger than white-box PGD L∞"]
    assert "masked" in failed[0].detail
