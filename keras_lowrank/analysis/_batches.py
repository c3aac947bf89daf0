"""Iterating over the inputs of a dataset, whatever form the user passes."""

import numpy as np


def iterate_inputs(data, batch_size=256, max_batches=None):
    """Yields input batches (numpy) from a tf.data.Dataset, an iterable of
    batches, or an array; (x, y[, w]) tuples yield their x."""
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # numpy or a tensor
        array = np.asarray(data)
        batches = (
            array[i : i + batch_size] for i in range(0, len(array), batch_size)
        )
    elif hasattr(data, "as_numpy_iterator"):
        batches = data.as_numpy_iterator()
    else:
        try:
            batches = iter(data)
        except TypeError:
            raise ValueError(
                "`data` must be a tf.data.Dataset, an iterable of batches or an "
                f"array of inputs, got {type(data).__name__}."
            ) from None
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch
