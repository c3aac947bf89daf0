"""perturbation_dimensionality against a numpy PCA of f(x + δ) − f(x) computed
from the whole dataset at once, and on a bottleneck of known rank."""

import keras
import numpy as np
import pytest

from keras_lowrank.analysis import perturbation_dimensionality
from keras_lowrank.robustness import FGSM, Corruption, GaussianNoise


def np_pca_dimension(delta, threshold):
    delta = delta.reshape(len(delta), -1).astype(np.float64)
    variances = np.linalg.svd(delta - delta.mean(0), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(variances) / variances.sum(), threshold - 1e-9) + 1)


def small_cnn():
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(12, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])


class Brighten:
    """A deterministic, input-dependent perturbation: x + 0.2 · x²."""

    def __call__(self, model, x, y=None):
        return x + 0.2 * x**2


@pytest.mark.parametrize("threshold", [0.9, 0.99])
def test_matches_numpy_pca_for_attack_and_callable(rng, threshold):
    model = small_cnn()
    x = rng.uniform(size=(45, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=45)
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in ("conv", "hidden")])
    for perturbation in (FGSM(0.1), Brighten()):
        got = perturbation_dimensionality(model, (x, y), perturbation, threshold=threshold,
                                          batch_size=16)
        assert list(got) == ["conv", "hidden"]
        perturbed = np.asarray(keras.ops.convert_to_numpy(perturbation(model, x, y)))
        for name, clean, moved in zip(got, features.predict(x, verbose=0),
                                      features.predict(perturbed, verbose=0)):
            assert got[name].variance_rank == np_pca_dimension(moved - clean, threshold)
            assert got[name].num_samples == 45


def test_bottleneck_bounds_the_dimension(rng):
    """f = Dense(20) ∘ Dense(3) ∘ (…): every change at the wide layer lies in a
    3-dimensional subspace (centred: its mean removed), noise or corruption."""
    model = keras.Sequential([
        keras.Input((10,)), keras.layers.Dense(3, name="bottleneck"),
        keras.layers.Dense(20, name="wide"), keras.layers.Dense(2, name="logits"),
    ])
    x = rng.uniform(size=(64, 10)).astype("float32")
    y = rng.integers(0, 2, size=64)
    noise = perturbation_dimensionality(model, (x, y), GaussianNoise(0.3, clip=None, seed=1),
                                        layers=["wide"], threshold=1.0)["wide"]
    assert noise.variance_rank == 3
    assert noise.num_features == 20


def test_corruption_and_errors(rng):
    model = small_cnn()
    x = rng.uniform(size=(8, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=8)
    result = perturbation_dimensionality(model, (x, y), Corruption("contrast", 3))
    assert all(1 <= r.variance_rank <= r.num_features for r in result.values())
    with pytest.raises(ValueError, match="threshold"):
        perturbation_dimensionality(model, (x, y), FGSM(0.1), threshold=0.0)
    with pytest.raises(ValueError, match="perturbation"):
        perturbation_dimensionality(model, (x, y), "fgsm")
    with pytest.raises(ValueError, match="max_features"):
        perturbation_dimensionality(model, (x, y), FGSM(0.1), max_features=10)
