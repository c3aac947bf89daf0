import numpy as np
import pytest

from keras_lowrank import LowRankWarning, data

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too

tfds = pytest.importorskip("tensorflow_datasets")


def collect(dataset):
    xs, ys = zip(*dataset.as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def test_digits_split_is_fixed_stratified_and_in_unit_range():
    from sklearn.datasets import load_digits

    train, info = data.load("digits", "train", batch_size=100)
    test, test_info = data.load("digits", "test", batch_size=100)
    x_train, y_train = collect(train)
    x_test, y_test = collect(test)
    assert info.input_shape == (8, 8, 1) and info.num_classes == 10
    assert len(x_train) + len(x_test) == len(load_digits().target) == 1797
    assert (info.num_examples, test_info.num_examples) == (len(x_train), len(x_test))
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    # stratified: class proportions agree within one example per class
    assert np.abs(np.bincount(y_train) / 3 - np.bincount(y_test)).max() <= 1.5
    # the split is fixed and the test set is the same samples every time
    again, _ = collect(data.load("digits", "test", batch_size=7)[0])
    np.testing.assert_array_equal(np.sort(again.reshape(len(again), -1), 0),
                                  np.sort(x_test.reshape(len(x_test), -1), 0))
    # and it is the digits themselves: every test image is a sklearn image / 16
    reference = {img.tobytes() for img in (load_digits().images / 16).astype("float32")}
    assert all(img[..., 0].tobytes() in reference for img in x_test)


def test_mnist1d_shapes_and_range(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_LOWRANK_CACHE", str(tmp_path))
    train, info = data.load("mnist1d", "train", batch_size=500)
    x, y = collect(train)
    assert info.input_shape == (40, 1) and x.shape == (4000, 40, 1)
    assert x.min() >= 0 and x.max() <= 1 and set(np.unique(y)) == set(range(10))
    assert (tmp_path / "mnist1d_default.npz").exists()
    x_test, _ = collect(data.load("mnist1d", "test")[0])
    assert x_test.shape == (1000, 40, 1) and x_test.min() >= 0 and x_test.max() <= 1


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10),
                                                ("cifar100", (32, 32, 3), 100)])
def test_tfds_datasets_with_mock_data(name, shape, classes):
    with tfds.testing.mock_data(num_examples=12):
        dataset, info = data.load(name, "train", batch_size=5)
        x, y = collect(dataset)
    assert info.input_shape == shape and info.num_classes == classes
    assert x.shape == (12,) + shape and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and y.dtype == np.int32


def test_cifar10_corrupted_with_mock_data():
    with tfds.testing.mock_data(num_examples=6):
        dataset, info = data.load("cifar10_corrupted/gaussian_noise_3", "test")
        x, _ = collect(dataset)
    assert x.shape == (6, 32, 32, 3) and info.num_classes == 10


def test_missing_tfds_data_says_how_to_fix(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="data_dir=.*TFDS_DATA_DIR"):
        data.load("fashion_mnist", data_dir=str(tmp_path), download=False)


def test_no_network_fails_at_once_instead_of_retrying(tmp_path, monkeypatch):
    """tfds retries an unreachable host for minutes (205 s seen): without a
    network, a download is not attempted."""
    import time

    calls = []
    monkeypatch.setattr(data, "_tfds_reachable", lambda timeout=3.0: calls.append(1) or False)
    start = time.time()
    with pytest.raises(data.DataUnavailableError, match="could not be downloaded"):
        data.load("fashion_mnist", data_dir=str(tmp_path), download=True)
    assert calls and time.time() - start < 60


def test_a_damaged_mnist1d_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_LOWRANK_CACHE", str(tmp_path))
    reference = data.load_mnist1d_arrays("test")
    (tmp_path / "mnist1d_default.npz").write_bytes(b"PK\x03\x04 not a zip file")
    with pytest.warns(LowRankWarning, match="unreadable"):
        x, y = data.load_mnist1d_arrays("test")
    np.testing.assert_array_equal(x, reference[0])
    np.testing.assert_array_equal(y, reference[1])


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "imagenet"}, "valid names are digits, mnist1d"),
    ({"name": "cifar10_corrupted/fog_6"}, "severity 1..5"),
    ({"name": "cifar10_corrupted/rain_1"}, "corruption one of"),
    ({"name": "digits", "split": "validation"}, "`split`"),
    ({"name": "digits", "batch_size": 0}, "`batch_size`"),
    ({"name": "digits", "batch_size": True}, "`batch_size`"),  # was batches of 1
    ({"name": "digits", "shuffle": "no"}, "`shuffle`"),  # was truthy: shuffled
    ({"name": "digits", "seed": -1}, "`seed`"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_cifar10_corrupted_feeds_the_robustness_report():
    import keras

    from keras_lowrank.robustness import evaluate_robustness

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    with tfds.testing.mock_data(num_examples=8):
        corrupted, info = data.load("cifar10_corrupted/fog_3", "test", batch_size=4)
        report = evaluate_robustness(model, corrupted, datasets={"CIFAR-10-C fog 3": corrupted},
                                     large_eps=None)
    assert [r["name"] for r in report.rows] == ["clean", "CIFAR-10-C fog 3"]
    assert report.rows[1]["accuracy"] == report.clean_accuracy


def test_the_cifar_examples_read_tfds_cifar10_with_limit(tmp_path):
    """The examples' real-data path (``keras_lowrank_experiments.cifar.load_cifar10``)
    through tfds, on mock data: ``--limit`` slices both splits, images in [0, 1]."""
    import argparse

    from keras_lowrank_experiments.cifar import load_cifar10

    args = argparse.Namespace(synthetic=False, limit=10, data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=24):
        train, test, x_test, y_test = load_cifar10(args, batch_size=4)
    x, y = collect(train)
    assert x.shape == (10, 32, 32, 3) and x_test.shape == (10, 32, 32, 3) and len(y_test) == 10
    assert 0 <= x.min() and x.max() <= 1 and set(np.unique(y)) <= set(range(10))
    assert len(test) == 1 and len(train) == 3  # ArrayBatches: 10 examples in batches of 4


def test_the_synthetic_cifar_stand_in_scales_to_larger_images():
    """``synthetic_cifar10(image_size=64)`` draws the same classes' patterns on finer
    pixels: averaged 2×2, each class's mean image is the 32×32 one's (noise aside), and
    ``vgg16_cifar(image_size=64)`` takes it (its first dense layer 4× wider); sizes the
    five poolings cannot halve are refused."""
    from keras_lowrank_experiments.cifar import synthetic_cifar10, vgg16_cifar

    x32, y32 = synthetic_cifar10("train", 400)
    x64, y64 = synthetic_cifar10("train", 400, image_size=64)
    assert x64.shape == (400, 64, 64, 3) and np.array_equal(y32, y64) and 0 <= x64.min() and x64.max() <= 1
    pooled = x64.reshape(400, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    for c in range(10):  # per-pixel noise 0.1: class means of ~40 images differ by ~0.02
        assert np.mean(np.abs(pooled[y64 == c].mean(0) - x32[y32 == c].mean(0))) < 0.05
    model = vgg16_cifar(width=0.125, dense_units=64, image_size=64)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 10)
    assert model.get_layer("fc_1").kernel.shape == (2 * 2 * 64, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        vgg16_cifar(image_size=48)
    with pytest.raises(ValueError, match="multiple of 4"):
        synthetic_cifar10("train", 4, image_size=30)
