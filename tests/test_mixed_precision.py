"""Mixed precision (``keras.mixed_precision``): the LR layer thresholds in float32,
PerturbedModel attacks the float32 data and the selectivity regularizer adds a
float32 term, on both backends."""

import keras
import numpy as np
import pytest

from keras_lowrank import LowRankProjection, data
from keras_lowrank.robustness import FGSM, PGD, PerturbedModel

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits_arrays("train")
    return x[:256], y[:256]


def numpy_truncate(w, rank, sketch=None, power_iterations=2):
    """Eckart–Young by SVD, or (``sketch``) Halko et al.'s randomized range finder."""
    w = w.astype(np.float64)
    if sketch is None:
        u, s, vt = np.linalg.svd(w)
        return (u[:, :rank] * s[:rank]) @ vt[:rank]
    q = np.linalg.qr(w @ sketch)[0]
    for _ in range(power_iterations):
        q = np.linalg.qr(w @ np.linalg.qr(w.T @ q)[0])[0]
    u, s, vt = np.linalg.svd(q.T @ w, full_matrices=False)
    return ((q @ u[:, :rank]) * s[:rank]) @ vt[:rank]


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_lr_layer_thresholds_in_float32_under_mixed_precision(mixed_bfloat16, digits, svd):
    x, y = digits
    keras.utils.set_random_seed(0)
    layer = LowRankProjection(rank=3, update_every=100, output_mode="projection", svd=svd,
                              kernel_initializer="random_normal")  # distinct singular values
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(48, activation="relu"), layer,
                              keras.layers.Dense(10, dtype="float32")])
    assert layer.compute_dtype == "bfloat16"
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    sketch = keras.ops.convert_to_numpy(layer.sketch) if svd == "randomized" else None  # the first one's
    model.compile(keras.optimizers.SGD(0.01), CE)
    history = model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # one step, thresholding
    assert np.isfinite(history.history["loss"][0])
    # The first step set W = kernel + correction to the best rank-3 approximation
    # of the initial kernel (the optimizer then moved only the kernel).
    correction = keras.ops.convert_to_numpy(layer.threshold_correction)
    assert layer.threshold_correction.dtype == "float32"
    np.testing.assert_allclose(correction, numpy_truncate(kernel, 3, sketch) - kernel, atol=2e-5)
    out = model.layers[1](model.layers[0](x[:4]))
    assert keras.backend.standardize_dtype(layer(out).dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(loss.dtype) == "float32" for loss in layer.losses)


def test_perturbed_model_attacks_float32_inputs_under_mixed_precision(mixed_bfloat16, digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10, dtype="float32")])
    model.compile("adam", CE)
    model.fit(x, y, epochs=3, verbose=0)
    attack = FGSM(0.1)
    x_adv = keras.ops.convert_to_numpy(attack(model, x, y))
    assert x_adv.dtype == np.float32 and np.abs(x_adv - x).max() <= 0.1 + 1e-6
    direct = np.mean(np.argmax(keras.ops.convert_to_numpy(model(x_adv)), -1) == y)
    wrapper = PerturbedModel(model, attack)
    wrapper.compile(loss=CE, metrics=["accuracy"])
    got = wrapper.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)["accuracy"]
    assert abs(got - direct) <= 1 / len(x) + 1e-6
    trainer = PerturbedModel(model, PGD(0.1, steps=3))
    trainer.compile("adam", CE)
    before = keras.ops.convert_to_numpy(model.weights[0])
    assert np.isfinite(trainer.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    assert not np.allclose(keras.ops.convert_to_numpy(model.weights[0]), before)


def test_selectivity_regularizer_under_mixed_precision(mixed_bfloat16, digits):
    from keras_lowrank.regularizers import SelectivityRegularizedModel

    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu", name="hidden"),
                              keras.layers.Dense(10, dtype="float32")])
    hidden = keras.Model(model.inputs, model.get_layer("hidden").output)
    from test_selectivity import np_selectivity  # the numpy loop of docs/methods.md §4

    a = keras.ops.convert_to_numpy(keras.ops.cast(hidden(x), "float32"))
    expected = np_selectivity(a, y, 10).mean()
    results = {}
    for alpha in (0.0, 1.5):
        wrapper = SelectivityRegularizedModel(model, alpha)
        wrapper.compile(loss=CE)
        results[alpha] = wrapper.evaluate(x, y, batch_size=len(x), verbose=0)
    assert results[1.5] - results[0.0] == pytest.approx(-1.5 * expected, abs=1e-4)
    trainer = SelectivityRegularizedModel(model, -1.0)
    trainer.compile("adam", CE)
    assert np.isfinite(trainer.fit(x, y, epochs=1, verbose=0).history["loss"][0])
