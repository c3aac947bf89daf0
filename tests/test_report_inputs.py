"""What ``evaluate_robustness`` and ``PerturbedModel`` are given
(keras_lowrank/robustness/_report_inputs.py): labels, values, shapes, datasets and
arguments checked before any work, each refusal naming the argument and the fix."""

import keras
import numpy as np
import pytest
from keras import ops
from models import linear_classifier, unit_data

from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel, evaluate_robustness

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize("bad", ["too_large", "negative", "fractional"])
def test_invalid_labels_raise_a_value_error_naming_y(bad):
    x, y = unit_data()
    y = {"too_large": np.where(y == 0, 3, y), "negative": np.where(y == 0, -1, y),
         "fractional": y + 0.5}[bad]
    with pytest.raises(ValueError, match="`y`: .* label"):
        evaluate_robustness(linear_classifier(), (x, y), attacks=[FGSM(0.05)], large_eps=None)
    wrapper = PerturbedModel(linear_classifier(), PGD(0.05, steps=2))
    wrapper.compile(loss=LOSS, metrics=["accuracy"])
    with pytest.raises(ValueError, match="`y`: .* label"):
        wrapper.evaluate(x, y, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="`y`: .* label"):
        wrapper.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # the selectivity regularizer's wrapper too (a graph error on TF, numbers on JAX:
    # a loss of inf, or 0.5 truncated to class 0); the count is the batch's, as NumPy's
    from keras_lowrank import SelectivityRegularizedModel

    hidden = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                               keras.layers.Dense(3)])
    regularized = SelectivityRegularizedModel(hidden, alpha=1.0)
    regularized.compile("sgd", LOSS)
    first = int(np.sum((y[:16] < 0) | (y[:16] >= 3) | (y[:16] != np.round(y[:16]))))
    for run in (lambda: regularized.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False),
                lambda: regularized.evaluate(x, y, batch_size=16, verbose=0)):
        with pytest.raises(ValueError, match=f"`y`: {first} label"):
            run()
    valid = np.round(np.clip(y, 0, 2))
    assert np.isfinite(regularized.fit(x, valid, batch_size=16, epochs=1, verbose=0).history["loss"][0])


def test_one_output_models_are_refused():
    x, y = unit_data()
    for head in (keras.layers.Dense(1), keras.layers.Dense(1, activation="sigmoid")):
        model = keras.Sequential([keras.Input((8,)), head])
        with pytest.raises(ValueError, match=r"classes ≥ 2"):
            evaluate_robustness(model, (x, y % 2), attacks=[FGSM(0.05)], large_eps=None)


def test_nan_and_integer_inputs_are_reported():
    x, y = unit_data()
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="`x`: 1 input"):
        evaluate_robustness(linear_classifier(), (x_nan, y), attacks=[FGSM(0.05)], large_eps=None)
    wrapper = PerturbedModel(linear_classifier(), GaussianNoise(0.1, clip=None))
    wrapper.compile(loss=LOSS, metrics=["accuracy"])
    with pytest.raises(ValueError, match="NaN"):
        wrapper.evaluate(x_nan, y, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="divide by 255"):
        evaluate_robustness(linear_classifier(), ((x * 255).astype("uint8"), y),
                            attacks=[FGSM(0.05)], large_eps=None)
    with pytest.raises(ValueError, match="no examples"):
        evaluate_robustness(linear_classifier(), (x[:0], y[:0]), attacks=[FGSM(0.05)])


def test_one_hot_labels_and_array_pairs_give_the_sparse_result():
    x, y = unit_data()
    model = linear_classifier()
    attacks = [FGSM(0.1), PGD(0.1, steps=3, random_start=False)]
    sparse = evaluate_robustness(model, (x, y), attacks=attacks, large_eps=None)
    onehot = evaluate_robustness(model, (x, np.eye(3, dtype="float32")[y]), attacks=attacks,
                                 large_eps=None)
    logits = _np(model(x))
    assert sparse.clean_accuracy == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-6)
    assert [r["accuracy"] for r in onehot.rows] == pytest.approx(
        [r["accuracy"] for r in sparse.rows], abs=1e-6)
    assert sparse.num_examples == len(x)


def test_report_arguments_given_alone_or_malformed():
    """One attack, corruption or σ given alone is a list of one (it raised a TypeError
    from deep inside); a bad ``clip`` is refused even when no row uses it; a tuple of
    three arrays (x, y, weights) is named instead of failing on an attribute."""
    from keras_lowrank.robustness import Corruption

    x, y = unit_data()
    model = linear_classifier()
    listed = evaluate_robustness(model, (x, y), attacks=[FGSM(0.05)], noise_sigmas=[0.1],
                                 corruptions=[Corruption("contrast", 2)], large_eps=None)
    for sigma in (0.1, np.float32(0.1), np.array(0.1), (s for s in [0.1])):
        alone = evaluate_robustness(model, (x, y), attacks=FGSM(0.05), noise_sigmas=sigma,
                                    corruptions=Corruption("contrast", 2), large_eps=None)
        assert [(r["name"], r["accuracy"]) for r in alone.rows] == [(r["name"], r["accuracy"]) for r in listed.rows]
    with pytest.raises(ValueError, match=r"`clip` must be None or \(low, high\) with low < high"):
        evaluate_robustness(model, (x, y), clip=(1.0, 0.0), large_eps=None)
    with pytest.raises(ValueError, match=r"`data` is a tuple of 3 arrays; pass an \(x, y\) pair"):
        evaluate_robustness(model, (x, y, np.ones(len(x))), attacks=[FGSM(0.05)], large_eps=None)


def test_a_report_refuses_an_endless_dataset(rng):
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])

    class Endless(keras.utils.PyDataset):
        def __getitem__(self, index):
            return x, y

        @property
        def num_batches(self):
            return None

    with pytest.raises(ValueError, match="endless"):
        evaluate_robustness(model, Endless(), attacks=[FGSM(0.1)], large_eps=None)
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(ValueError, match="endless"):
        evaluate_robustness(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(),
                            attacks=[FGSM(0.1)], large_eps=None)


def test_a_dataset_of_another_shape_is_refused_before_any_trace_and_the_model_still_works(rng):
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    before = _np(model.predict(x, verbose=0))
    with pytest.raises(ValueError, match=r"datasets\['bad'\].*\(5,\).*\(6,\)"):
        evaluate_robustness(model, (x, y), attacks=[FGSM(0.1)], large_eps=None,
                            datasets={"bad": (x[:, :5], y)})
    np.testing.assert_array_equal(_np(model.predict(x, verbose=0)), before)  # on JAX it raised before


def test_python_lists_in_a_report_score_as_arrays():
    model = linear_classifier(features=6)
    x, y = unit_data(n=16, features=6)
    as_lists = evaluate_robustness(model, (x.tolist(), y.tolist()), noise_sigmas=[0.0], large_eps=None)
    as_arrays = evaluate_robustness(model, (x, y), noise_sigmas=[0.0], large_eps=None)
    assert as_lists.clean_accuracy == as_arrays.clean_accuracy

