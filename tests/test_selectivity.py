"""Class selectivity index, its dataset summary and the regularizer, against an
independent numpy loop over units and classes and on known properties."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import float32_matmuls
from keras_lowrank.analysis import class_selectivity, class_selectivity_index
from keras_lowrank.regularizers import SelectivityRegularizedModel

pytestmark = [pytest.mark.own_precision, pytest.mark.torch]  # own_precision: see conftest  # torch: in the torch half


def np_selectivity(activations, labels, num_classes, eps=1e-7):
    """SI per unit by a plain loop: class means, μ_max, mean of the others."""
    a = activations.astype(np.float64)
    if a.ndim > 2:
        a = a.mean(axis=tuple(range(1, a.ndim - 1)))
    classes = [c for c in range(num_classes) if np.any(labels == c)]
    out = []
    for unit in range(a.shape[1]):
        means = np.array([a[labels == c, unit].mean() for c in classes])
        top = means.argmax()
        rest = np.delete(means, top).mean()
        out.append((means[top] - rest) / (means[top] + rest + eps))
    return np.array(out)


def numpy_of(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_index_matches_numpy_loop_dense_and_conv(rng):
    labels = rng.integers(0, 5, size=64)
    labels[labels == 3] = 4  # class 3 absent from the batch
    dense = rng.exponential(size=(64, 7)).astype("float32")
    conv = np.maximum(rng.normal(size=(64, 4, 5, 3)), 0).astype("float32")
    for acts in (dense, conv):
        got = numpy_of(class_selectivity_index(acts, labels, 5))
        np.testing.assert_allclose(got, np_selectivity(acts, labels, 5), atol=1e-5)
    one_hot = np.eye(5)[labels]
    np.testing.assert_allclose(numpy_of(class_selectivity_index(dense, one_hot, 5)),
                               np_selectivity(dense, labels, 5), atol=1e-5)


def test_index_known_values_and_scale_invariance(rng):
    labels = np.repeat(np.arange(4), 10)
    only_class_2 = (labels == 2).astype("float32") * 3.0
    constant = np.full(40, 0.7, "float32")
    dead = np.zeros(40, "float32")
    acts = np.stack([only_class_2, constant, dead], axis=1)
    np.testing.assert_allclose(numpy_of(class_selectivity_index(acts, labels, 4)),
                               [1.0, 0.0, 0.0], atol=1e-6)
    random = rng.exponential(size=(40, 6)).astype("float32")
    np.testing.assert_allclose(numpy_of(class_selectivity_index(7.5 * random, labels, 4)),
                               numpy_of(class_selectivity_index(random, labels, 4)), atol=1e-5)


def test_index_errors():
    with pytest.raises(ValueError, match="num_classes"):
        class_selectivity_index(np.ones((4, 2)), np.zeros(4), 1)
    with pytest.raises(ValueError, match="labels"):
        class_selectivity_index(np.ones((4, 2)), np.zeros(5), 3)
    with pytest.raises(ValueError, match="activations"):
        class_selectivity_index(np.ones(4), np.zeros(4), 3)
    # these gave numbers without a word: truncated labels, an SI of a negative mean
    # (here ≈ −12, outside [0, 1]), NaN; a numpy int class count was refused
    acts, labels = np.abs(np.random.default_rng(0).normal(size=(8, 3))), np.arange(8) % 2
    with pytest.raises(ValueError, match=r"`labels` must be integer classes in \[0, 2\)"):
        class_selectivity_index(acts, labels + 0.5, 2)
    with pytest.raises(ValueError, match=r"`labels` must be integer classes"):
        class_selectivity_index(acts, labels + 2, 2)
    shifted = acts - acts.mean()
    assert not np.all((np_selectivity(shifted, labels, 2) >= 0) & (np_selectivity(shifted, labels, 2) <= 1))
    with pytest.raises(ValueError, match=r"`activations` must be non-negative.*minimum of -"):
        class_selectivity_index(shifted, labels, 2)
    with pytest.raises(ValueError, match="NaN"):
        class_selectivity_index(np.where(acts > 1, np.nan, acts), labels, 2)
    np.testing.assert_allclose(numpy_of(class_selectivity_index(acts, labels, np.int64(2))),
                               np_selectivity(acts, labels, 2), atol=1e-6)


def tiny_cnn(num_classes=4):
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(5, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, name="pre"),
        keras.layers.ReLU(name="relu"),
        keras.layers.Dense(num_classes, name="logits"),
    ])


def test_dataset_summary_streams_exactly(rng):
    model = tiny_cnn()
    x = rng.uniform(size=(50, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 4, size=50)
    summary = class_selectivity(model, (x, y), batch_size=16)  # batches of 16, 16, 16, 2
    assert list(summary.layers) == ["conv", "relu"]  # default: post-ReLU, not the output
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in ("conv", "relu")])
    with float32_matmuls():  # as class_selectivity runs the model (no TF32 on GPUs)
        all_acts = features.predict(x, verbose=0)
    for name, acts in zip(("conv", "relu"), all_acts):
        np.testing.assert_allclose(summary.layers[name].index, np_selectivity(acts, y, 4),
                                   atol=1e-5)
        assert summary.layers[name].num_samples == 50
    assert summary.mean == pytest.approx(np.mean([s.mean for s in summary.layers.values()]))
    assert "| conv | 5 |" in summary.to_markdown()
    dead = np.all(all_acts[1] <= 0, axis=0).sum()
    assert summary.layers["relu"].dead_units == dead


def test_dataset_summary_errors(rng):
    model = tiny_cnn()
    x = rng.uniform(size=(8, 6, 6, 1)).astype("float32")
    with pytest.raises(ValueError, match="negative"):
        class_selectivity(model, (x, np.zeros(8, int)), layers=["pre"])
    with pytest.raises(ValueError, match="labels must be integer classes"):
        class_selectivity(model, (x, np.full(8, 4)))
    with pytest.raises(ValueError, match="with labels"):
        class_selectivity(model, [x])
    with pytest.raises(ValueError, match="no layer named"):
        class_selectivity(model, (x, np.zeros(8, int)), layers=["nope"])


def test_regularizer_adds_minus_alpha_mean_selectivity(rng):
    model = tiny_cnn()
    x = rng.uniform(size=(32, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 4, size=32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in ("conv", "relu")])
    expected_si = np.mean([np_selectivity(a, y, 4).mean()
                           for a in features.predict(x, verbose=0)])
    results = {}
    for alpha in (0.0, 1.5):
        wrapper = SelectivityRegularizedModel(model, alpha)
        wrapper.compile(loss=loss)
        results[alpha] = wrapper.evaluate(x, y, batch_size=32, verbose=0)
    assert results[1.5] - results[0.0] == pytest.approx(-1.5 * expected_si, abs=1e-5)
    # predict has no labels: plain model outputs
    np.testing.assert_allclose(wrapper.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_regularizer_errors_and_round_trip(rng, tmp_path):
    model = tiny_cnn()
    with pytest.raises(ValueError, match="alpha"):
        SelectivityRegularizedModel(model, alpha="low")
    with pytest.raises(ValueError, match="no layer with a ReLU"):
        SelectivityRegularizedModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 1.0)
    wrapper = SelectivityRegularizedModel(model, -2.0, layers=["relu"])
    wrapper.save(tmp_path / "wrapper.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapper.keras")
    assert (loaded.alpha, loaded.layer_names, loaded.num_classes) == (-2.0, ["relu"], 4)
    x = rng.uniform(size=(5, 6, 6, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


@pytest.mark.slow
def test_alpha_sign_moves_selectivity_on_digits():
    """α < 0 lowers and α > 0 raises the trained model's mean selectivity
    (measured on held-out digits), relative to α = 0 from the same start."""
    from keras_lowrank.data import load_digits_arrays

    (x, y), (x_test, y_test) = load_digits_arrays("train"), load_digits_arrays("test")
    means = {}
    for alpha in (-2.0, 0.0, 2.0):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(), keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10),
        ])
        wrapper = SelectivityRegularizedModel(model, alpha)
        wrapper.compile(optimizer=keras.optimizers.Adam(1e-3),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        wrapper.fit(x, y, batch_size=64, epochs=8, verbose=0)
        means[alpha] = class_selectivity(model, (x_test, y_test)).mean
    assert means[-2.0] < means[0.0] < means[2.0], means


def _gelu_floor():
    """min over z of z Φ(z), by scipy: an independent value for GELU's floor."""
    from scipy.optimize import minimize_scalar
    from scipy.special import erf

    return minimize_scalar(lambda z: z * 0.5 * (1 + erf(z / np.sqrt(2))), bounds=(-3, 0), method="bounded").fun


def test_models_without_relu_are_measured_shifted_by_the_activation_floor(rng):
    from keras_lowrank.analysis.selectivity import activation_floor

    floor = _gelu_floor()
    assert activation_floor(keras.layers.Dense(2, activation="gelu")) == pytest.approx(floor, abs=1e-4)
    assert activation_floor(keras.layers.Activation("tanh")) == pytest.approx(-1.0, abs=1e-6)
    assert activation_floor(keras.layers.Dense(2, activation="relu")) == 0.0
    for unbounded in (keras.layers.Dense(2), keras.layers.LeakyReLU(), keras.layers.Dense(2, activation="softsign")):
        assert activation_floor(unbounded) is None
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="gelu", name="a"),
                              keras.layers.Dense(8, activation="swish", name="b"), keras.layers.Dense(3)])
    x = rng.normal(size=(60, 6)).astype("float32")
    y = rng.integers(0, 3, size=60)
    summary = class_selectivity(model, (x, y))
    assert list(summary.layers) == ["a", "b"]  # no ReLU: the bounded-below activations, not the output
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in ("a", "b")])
    with float32_matmuls():
        acts = features.predict(x, verbose=0)
    assert acts[0].min() < 0  # GELU outputs are signed
    swish_floor = -0.2784645  # min of z σ(z), at z ≈ −1.2785
    for name, a, low in zip(("a", "b"), acts, (floor, swish_floor)):
        np.testing.assert_allclose(summary.layers[name].index, np_selectivity(a - low, y, 3), atol=1e-4)
        assert summary.layers[name].offset == pytest.approx(-low, abs=1e-4)
    # the regularizer measures the same shifted outputs
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {}
    for alpha in (0.0, 2.0):
        wrapper = SelectivityRegularizedModel(model, alpha)
        wrapper.compile(loss=loss)
        results[alpha] = wrapper.evaluate(x, y, batch_size=60, verbose=0)
    expected = np.mean([np_selectivity(a - low, y, 3).mean() for a, low in zip(acts, (floor, swish_floor))])
    assert results[2.0] - results[0.0] == pytest.approx(-2.0 * expected, abs=1e-4)
    leaky = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="h"), keras.layers.LeakyReLU(name="l"),
                              keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="bounded below"):
        class_selectivity(leaky, (x, y))
    with pytest.raises(ValueError, match="negative outputs"):
        class_selectivity(leaky, (x, y), layers=["l"])
