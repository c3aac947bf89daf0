"""Datasets as batches of (image, label), images float32 in [0, 1]: a batched
``tf.data.Dataset`` where TensorFlow is installed, else a ``keras.utils.PyDataset``
(``ArrayBatches``), which ``fit``/``evaluate``/``predict`` take on every backend.

Offline and real (no download): ``"digits"`` — scikit-learn's bundled 8×8
handwritten digits, a fixed stratified 75/25 split; ``"mnist1d"`` — MNIST-1D
(Greydanus 2020) generated locally by the ``mnist1d`` package with its default
arguments (4000 train / 1000 test signals of length 40, shaped (40, 1)).

Through TensorFlow Datasets: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
``"cifar100"`` and ``"cifar10_corrupted/<corruption>_<severity>"`` (test split only).
"""

import dataclasses
import importlib.util
import os
import sys
import warnings

import keras
import numpy as np

from keras_lowrank._optional import require
from keras_lowrank._validation import check_int
from keras_lowrank._warning import LowRankWarning

__all__ = ["load", "available_datasets", "ArrayBatches", "DatasetInfo", "DataUnavailableError",
           "load_digits_arrays", "load_mnist1d_arrays"]
_PIPELINES = ("auto", "tf.data", "py_dataset")

OFFLINE_DATASETS = ("digits", "mnist1d")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
CIFAR10_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic", "fog", "frost",
    "frosted_glass_blur", "gaussian_blur", "gaussian_noise", "impulse_noise",
    "jpeg_compression", "motion_blur", "pixelate", "saturate", "shot_noise",
    "snow", "spatter", "speckle_noise", "zoom_blur",
)
CORRUPTED_PREFIX = "cifar10_corrupted/"
_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
            "cifar10_corrupted": 10}


class DataUnavailableError(RuntimeError):
    """The dataset is neither on disk nor downloadable from here.

    Raised by ``load`` for tfds datasets; the message says where to put the files
    (``data_dir``).

    Examples:

        >>> issubclass(DataUnavailableError, RuntimeError)
        True
    """


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a loaded split (``load``'s second result).

    Attributes:
        name: the dataset's name.
        split: the split loaded.
        input_shape: one example's shape.
        num_classes: the number of classes.
        num_examples: the split's size.

    Examples:

        >>> _, info = load("digits", "test")
        >>> info.input_shape, info.num_classes, info.num_examples
        ((8, 8, 1), 10, 450)
    """

    name: str
    split: str
    input_shape: tuple
    num_classes: int
    num_examples: int


def available_datasets():
    """Every accepted ``name`` (corruptions as the pattern they follow).

    Returns:
        a tuple of names: the offline datasets first, then the tfds ones.

    Examples:

        >>> available_datasets()[:2]
        ('digits', 'mnist1d')
    """
    return OFFLINE_DATASETS + TFDS_DATASETS + (
        CORRUPTED_PREFIX + "<corruption>_<1..5>",
    )


def load(name, split="train", batch_size=128, shuffle=None, seed=0,
         data_dir=None, download=True, pipeline="auto"):
    """Loads ``split`` of dataset ``name`` as batches of (inputs, labels).

    Args:
        name: one of ``available_datasets()``.
        split: ``"train"`` or ``"test"`` (tfds datasets accept any tfds split
            string, e.g. ``"train[:10%]"``).
        batch_size: batch size (≥ 1).
        shuffle: shuffle each epoch; default True for ``"train"``, else False.
        seed: shuffling seed.
        data_dir: passed to ``tfds.load`` for tfds datasets.
        download: passed to ``tfds.load`` for tfds datasets.
        pipeline: ``"tf.data"`` (a batched, prefetched ``tf.data.Dataset``; needs
            TensorFlow), ``"py_dataset"`` (``ArrayBatches``, a
            ``keras.utils.PyDataset``: no TensorFlow needed, offline datasets
            only) or ``"auto"`` (default): tf.data where TensorFlow is installed,
            else the PyDataset — so a JAX- or PyTorch-only install loads the
            offline datasets too.

    Returns:
        ``(dataset, DatasetInfo)``.

    Examples:

        >>> test, info = load("digits", "test", batch_size=100)
        >>> x, y = next(iter(test))
        >>> tuple(x.shape), str(x.dtype), float(np.max(x)) <= 1.0
        ((100, 8, 8, 1), "<dtype: 'float32'>", True)
    """
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    if shuffle is None:
        shuffle = split == "train"
    elif isinstance(shuffle, (bool, np.bool_)):
        shuffle = bool(shuffle)
    else:
        raise ValueError(f"`shuffle` must be True, False or None (train only), got {shuffle!r}.")
    if not isinstance(split, str):
        raise ValueError(f"`split` must be a string such as 'train' or 'test', got {split!r}.")
    if pipeline not in _PIPELINES:
        raise ValueError(f"`pipeline` must be one of {_PIPELINES}, got pipeline={pipeline!r}.")
    has_tf = _has_tensorflow()
    if pipeline == "tf.data" and not has_tf:
        raise ImportError("pipeline='tf.data' needs TensorFlow (pip install tensorflow-cpu); "
                          "pipeline='py_dataset' needs none.")
    if name in OFFLINE_DATASETS:
        if split not in ("train", "test"):
            raise ValueError(
                f"`split` for {name!r} must be 'train' or 'test', got {split!r}."
            )
        x, y = (load_digits_arrays if name == "digits" else load_mnist1d_arrays)(split)
        info = DatasetInfo(name, split, tuple(x.shape[1:]), 10, len(x))
        if pipeline == "py_dataset" or (pipeline == "auto" and not has_tf):
            return ArrayBatches(x, y, batch_size, shuffle, seed), info
        return _from_arrays(x, y, batch_size, shuffle, seed), info
    tfds_name = _check_tfds_name(name)
    if pipeline == "py_dataset" or not has_tf:
        raise ImportError(f"Dataset {name!r} comes through TensorFlow Datasets, which needs TensorFlow "
                          "(pip install keras-lowrank[tensorflow-cpu]) and pipeline='tf.data' or 'auto'. "
                          f"Without TensorFlow: {', '.join(OFFLINE_DATASETS)}.")
    return _load_tfds(name, tfds_name, split, batch_size, shuffle, seed,
                      data_dir, download)


def load_digits_arrays(split):
    """scikit-learn's digits as numpy arrays, split 75/25 (stratified, fixed seed).

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        (images (n, 8, 8, 1) float32 in [0, 1], labels (n,) int32).

    Examples:

        >>> x, y = load_digits_arrays("train")
        >>> x.shape, y.shape, sorted(set(y.tolist())) == list(range(10))
        ((1347, 8, 8, 1), (1347,), True)
    """
    require("sklearn", "The 'digits' dataset")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def _cache_dir():
    return os.environ.get(
        "KERAS_LOWRANK_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "keras_lowrank"),
    )


def load_mnist1d_arrays(split):
    """MNIST-1D as (signals (n, 40, 1) float32 in [0, 1], labels int32).

    The generator's standardised signals are mapped affinely to [0, 1] with the
    minimum and maximum over both splits. Cached under ``$KERAS_LOWRANK_CACHE``
    (default ``~/.cache/keras_lowrank``) since generation takes seconds.

    Args:
        split: ``"train"`` or ``"test"``.

    Returns:
        (signals (n, 40, 1) float32 in [0, 1], labels (n,) int32).

    Examples:

        >>> x, y = load_mnist1d_arrays("test")
        >>> x.shape[1:], 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        ((40, 1), True)
    """
    path = os.path.join(_cache_dir(), "mnist1d_default.npz")
    try:
        return _read_mnist1d(path, split)
    except FileNotFoundError:
        pass
    except Exception as error:  # a damaged cache (BadZipFile, a missing array): rebuilt
        warnings.warn(f"The MNIST-1D cache {path} is unreadable ({type(error).__name__}); "
                      "generating it again.", stacklevel=2, category=LowRankWarning)
        os.remove(path)
    _write_mnist1d(path)
    return _read_mnist1d(path, split)


def _read_mnist1d(path, split):
    with np.load(path) as arrays:
        if split == "train":
            x, y = arrays["x"], arrays["y"]
        else:
            x, y = arrays["x_test"], arrays["y_test"]
    if x.ndim != 3 or len(x) != len(y) or not np.all(np.isfinite(x)):
        raise ValueError("inconsistent arrays")
    return x, y


def _write_mnist1d(path):
    require("mnist1d", "The 'mnist1d' dataset")
    from mnist1d.data import get_dataset_args, make_dataset

    raw = make_dataset(get_dataset_args())
    low = min(raw["x"].min(), raw["x_test"].min())
    high = max(raw["x"].max(), raw["x_test"].max())
    scale = lambda v: ((v - low) / (high - low)).astype("float32")[..., None]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, x=scale(raw["x"]), y=raw["y"].astype("int32"),
             x_test=scale(raw["x_test"]), y_test=raw["y_test"].astype("int32"))
    os.replace(tmp, path)  # atomic: parallel test workers never see half a file


def _has_tensorflow():
    if "tensorflow" in sys.modules:  # imported, or blocked (None)
        return sys.modules["tensorflow"] is not None
    return importlib.util.find_spec("tensorflow") is not None


def _from_arrays(x, y, batch_size, shuffle, seed):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class ArrayBatches(keras.utils.PyDataset):
    """(x, y) arrays as a ``keras.utils.PyDataset`` of batches: what ``load``
    returns without TensorFlow. ``fit``, ``evaluate`` and ``predict`` take it on
    every backend; iterating it yields the batches once, in order (one epoch);
    with ``shuffle`` each epoch (``on_epoch_end``, which ``fit`` calls) draws a
    new order from ``seed``.

    Args:
        x: inputs, (n, ...).
        y: labels, (n,).
        batch_size: examples per batch (the last may be smaller).
        shuffle: reshuffle the examples every epoch.
        seed: seed of the shuffling.

    Examples:

        >>> batches = ArrayBatches(np.zeros((5, 2), "float32"), np.arange(5), batch_size=2)
        >>> len(batches), [len(y) for _, y in batches]
        (3, [2, 2, 1])
    """

    def __init__(self, x, y, batch_size=128, shuffle=False, seed=0, **kwargs):
        super().__init__(**kwargs)
        if len(x) != len(y):
            raise ValueError(f"`x` has {len(x)} examples but `y` has {len(y)}.")
        self.x, self.y = x, y
        self.batch_size = check_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x)) if self.shuffle else np.arange(len(x))

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        chosen = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[chosen], self.y[chosen]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def as_numpy_iterator(self):
        """The batches once, as tf.data's method of that name yields them."""
        return iter(self)

    def on_epoch_end(self):
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))


def _check_tfds_name(name):
    if name in TFDS_DATASETS:
        return name
    if isinstance(name, str) and name.startswith(CORRUPTED_PREFIX):
        config = name[len(CORRUPTED_PREFIX):]
        corruption, _, severity = config.rpartition("_")
        if corruption in CIFAR10_CORRUPTIONS and severity in list("12345"):
            return name
        raise ValueError(
            f"Unknown CIFAR-10-C config {config!r} in `name`: expected "
            f"'<corruption>_<severity>' with severity 1..5 and corruption one of "
            f"{', '.join(CIFAR10_CORRUPTIONS)}."
        )
    raise ValueError(
        f"Unknown dataset name={name!r}; valid names are "
        f"{', '.join(available_datasets())}."
    )


def _load_tfds(name, tfds_name, split, batch_size, shuffle, seed, data_dir,
               download):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if download and not _on_disk(tfds, tfds_name, data_dir) and not _tfds_reachable():
        # tfds retries a dead network for minutes before failing.
        download = False
    try:
        dataset, builder_info = tfds.load(
            tfds_name, split=split, as_supervised=True, with_info=True,
            data_dir=data_dir, download=download, shuffle_files=shuffle,
        )
    except (AssertionError, OSError) as error:
        # tfds: AssertionError "could not find data" with download=False;
        # OSError (requests' ConnectionError) when a download fails.
        detail = " ".join(str(error).split())
        if len(detail) > 200:  # tfds quotes whole URLs and tracebacks: cut at a word, say so
            detail = detail[:200].rsplit(" ", 1)[0] + " …"
        raise DataUnavailableError(
            f"Dataset {name!r} (split {split!r}) is not in the TFDS data dir "
            f"({data_dir or tfds.core.constants.DATA_DIR}) and could not be "
            f"downloaded ({type(error).__name__}: {detail}). On a "
            "machine with internet run `python -c \"import tensorflow_datasets "
            f"as tfds; tfds.load('{tfds_name}')\"`, copy ~/tensorflow_datasets "
            "here and pass data_dir= (or set TFDS_DATA_DIR). Offline datasets "
            f"that need no download: {', '.join(OFFLINE_DATASETS)}."
        ) from None

    def to_unit_range(image, label):
        return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)

    num_examples = int(dataset.cardinality())
    if num_examples < 0:  # unknown cardinality: fall back on the split metadata
        num_examples = builder_info.splits[split].num_examples
    dataset = dataset.map(to_unit_range, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    num_classes = _CLASSES[tfds_name.split("/")[0]]
    shape = tuple(builder_info.features["image"].shape)
    return dataset, DatasetInfo(name, split, shape, num_classes, num_examples)


_TFDS_HOST = ("storage.googleapis.com", 443)  # where tfds downloads from


def _on_disk(tfds, tfds_name, data_dir):
    try:
        return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()
    except Exception:
        return False


def _tfds_reachable(timeout=3.0):
    """Whether the tfds download host answers within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection(_TFDS_HOST, timeout=timeout):
            return True
    except OSError:
        return False
