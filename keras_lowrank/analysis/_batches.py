"""Iterating over the batches of a dataset, whatever form the user passes."""

import numpy as np

from keras_lowrank.data import DatasetInfo


def check_not_load_pair(data, argument="data"):
    """A clear error for the (dataset, info) pair ``data.load`` returns, passed
    whole where the dataset is meant (else it fails deep inside Keras)."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], DatasetInfo):
        raise ValueError(
            f"`{argument}` is the (dataset, info) pair that `data.load` returns; pass the "
            "dataset alone: `test, info = data.load(...)`, then `test`.")


def _batches(data):
    check_not_load_pair(data)
    if hasattr(data, "as_numpy_iterator"):
        return data.as_numpy_iterator()
    try:
        return iter(data)
    except TypeError:
        raise ValueError(
            "`data` must be a tf.data.Dataset, an iterable of batches or an "
            f"array of inputs, got {type(data).__name__}."
        ) from None


def _is_array(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_inputs(value):
    """An array, or a dict of arrays (a model with named inputs: keras-hub's
    ``token_ids`` / ``padding_mask``)."""
    return _is_array(value) or (isinstance(value, dict) and bool(value)
                                and all(map(_is_array, value.values())))


def batch_length(x):
    """How many examples batch ``x`` (an array or a dict of arrays) holds."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def take(x, n):
    """The first ``n`` examples of batch ``x`` (an array or a dict of arrays)."""
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _slices(x, batch_size):
    lengths = {len(v) for v in x.values()} if isinstance(x, dict) else {len(x)}
    if len(lengths) > 1:
        raise ValueError(f"`data`: the inputs of the dict hold different numbers of examples: "
                         f"{ {k: len(v) for k, v in x.items()} }.")
    total = lengths.pop()
    for i in range(0, total, batch_size):
        yield ({k: np.asarray(v)[i: i + batch_size] for k, v in x.items()} if isinstance(x, dict)
               else np.asarray(x)[i: i + batch_size])


def _checked_finite(x, index):
    """``x`` as numpy, refused if it holds NaN or infinite values: the measures would
    not see them everywhere (a ReLU maps NaN to 0 on some CPUs' kernels, AVX-512's
    oneDNN among them) and would return numbers for inputs that have none."""
    if isinstance(x, dict):
        return {k: _checked_finite(v, index) for k, v in x.items()}
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
        raise ValueError(f"`data`: batch {index} holds NaN or infinite inputs; remove or repair those "
                         "samples (e.g. np.nan_to_num, or drop them) before measuring.")
    return x


def iterate_inputs(data, batch_size=256, max_batches=None):
    """Yields input batches (numpy) from a tf.data.Dataset, an iterable of
    batches, an array, or an (x, y) pair of arrays (as ``evaluate_robustness`` takes);
    (x, y[, w]) batches yield their x."""
    if isinstance(data, tuple) and len(data) == 2 and _is_inputs(data[0]) and _is_array(data[1]):
        if batch_length(data[0]) != len(data[1]):
            raise ValueError(f"`data`: x has {batch_length(data[0])} samples but y has {len(data[1])}.")
        data = data[0]  # the labels are not needed
    if _is_inputs(data):  # numpy or a tensor, or a dict of them
        batches = _slices(data, batch_size)
    else:
        batches = _batches(data)
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield _checked_finite(batch, index)


def iterate_labelled(data, batch_size=256, max_batches=None):
    """Yields (x, y) numpy batches from a tf.data.Dataset or an iterable of
    (x, y[, w]) batches, or from an (x, y) pair of arrays (batched here)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and _is_inputs(data[0]) and _is_array(data[1]):
        x, y = data[0], np.asarray(data[1])
        if batch_length(x) != len(y):
            raise ValueError(f"`data`: x has {batch_length(x)} samples but y has {len(y)}.")
        batches = zip(_slices(x, batch_size), (y[i : i + batch_size] for i in range(0, len(y), batch_size)))
    else:
        batches = _batches(data)
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("`data` must yield (x, y) batches with labels, or be an "
                             "(x, y) pair of arrays.")
        yield _checked_finite(batch[0], index), np.asarray(batch[1])
