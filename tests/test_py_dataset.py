"""data.load without TensorFlow: ArrayBatches, a keras.utils.PyDataset."""

import keras
import numpy as np
import pytest

from keras_lowrank import data


def test_py_dataset_holds_the_same_examples_as_the_arrays():
    batches, info = data.load("digits", "test", batch_size=64, pipeline="py_dataset")
    x, y = data.load_digits_arrays("test")
    assert isinstance(batches, keras.utils.PyDataset) and len(batches) == -(-len(x) // 64)
    got_x, got_y = (np.concatenate(parts) for parts in zip(*batches))
    np.testing.assert_array_equal(got_x, x)  # no shuffling for the test split: in order
    np.testing.assert_array_equal(got_y, y)
    assert info.num_examples == len(x) and info.input_shape == x.shape[1:]


def test_shuffled_epochs_are_permutations_that_change():
    batches, _ = data.load("digits", "train", batch_size=100, pipeline="py_dataset", seed=3)
    x, y = data.load_digits_arrays("train")
    first = np.concatenate([b[1] for b in batches])
    batches.on_epoch_end()  # what fit calls between epochs
    second = np.concatenate([b[1] for b in batches])
    assert not np.array_equal(first, second)
    for order in (first, second):  # every example once per epoch
        np.testing.assert_array_equal(np.sort(order), np.sort(y))


def test_fit_and_evaluate_take_it(rng):
    batches, info = data.load("digits", "train", batch_size=128, pipeline="py_dataset")
    model = keras.Sequential([keras.Input(info.input_shape), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(batches, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    x, y = data.load_digits_arrays("train")
    direct = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert model.evaluate(batches, verbose=0, return_dict=True)["accuracy"] == pytest.approx(direct, abs=1e-6)


def test_bad_pipeline_and_tfds_without_tensorflow_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="pipeline"):
        data.load("digits", pipeline="numpy")
    with pytest.raises(ImportError, match="TensorFlow Datasets"):
        data.load("mnist", pipeline="py_dataset")
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)  # as if not installed
    assert isinstance(data.load("digits", "test")[0], data.ArrayBatches)
    with pytest.raises(ImportError, match="needs TensorFlow"):
        data.load("digits", pipeline="tf.data")
