"""What ``evaluate_robustness`` checks of its data before any work: an (x, y) pair
or a dataset of such batches, of the model's input shape, with labels it can score,
finite; refused with the argument's name and the fix otherwise (a failed trace on JAX
left the user's model unable to ``predict``)."""

import keras
import numpy as np

from keras_lowrank.analysis._batches import check_not_load_pair


def is_pair(data):
    """An (x, y) pair of arrays (numpy or tensors)."""
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in data))


def check_data(data, argument="data"):
    """A clear error for data ``evaluate`` cannot score: the ``data.load`` pair,
    a tuple of arrays other than (x, y), an (x, y) pair of unequal lengths, or no
    examples at all."""
    check_not_load_pair(data, argument)
    if (isinstance(data, (tuple, list)) and len(data) != 2 and data
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in data)):
        raise ValueError(
            f"`{argument}` is a {type(data).__name__} of {len(data)} arrays; pass an (x, y) pair "
            "(the report scores every example alike: no sample weights) or a tf.data.Dataset "
            "of (x, y) batches.")
    if is_pair(data) and len(data[0]) != len(data[1]):
        raise ValueError(f"`{argument}`: x has {len(data[0])} examples but y has {len(data[1])}.")
    count = count_examples(data)
    if count == 0:
        raise ValueError(f"`{argument}` holds no examples.")
    return count


def as_pair(model, data, argument="data"):
    """An (x, y) given as Python lists becomes arrays; its labels are checked on the
    host (the compiled step would fail obscurely on strings, None or one-hot rows of
    the wrong width). Anything else is returned as it is."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return data
    x, y = data
    if y is None:
        raise ValueError(f"`{argument}` is (x, None): the report scores predictions against labels; "
                         "pass (x, y) with y the true classes.")
    x = np.asarray(x, "float32") if isinstance(x, (list, tuple)) else x
    y = np.asarray(y) if isinstance(y, (list, tuple)) else y
    if not (hasattr(x, "shape") and hasattr(y, "dtype")):
        return data  # e.g. the (dataset, info) pair data.load returns: refused by check_data
    kind = np.dtype(getattr(y.dtype, "as_numpy_dtype", y.dtype)).kind
    if kind not in "biuf":
        raise ValueError(
            f"`{argument}`: y must hold integer class labels or one-hot rows, got dtype {y.dtype} (class "
            "names? map them to indices 0..classes−1, e.g. np.unique(y, return_inverse=True)[1]).")
    if len(y.shape) == 2:
        check_input_shape(model, (x, y), argument)  # before asking the model for its output shape
        classes = model.compute_output_shape((None,) + tuple(x.shape[1:]))[-1]
        if isinstance(classes, int) and y.shape[1] != classes:
            raise ValueError(f"`{argument}`: one-hot labels of width {y.shape[1]}, but the model has "
                             f"{classes} classes.")
    return (x, y)


def check_input_shape(model, data, argument="data"):
    """Examples of another shape than the model's input are refused before any
    tracing: a failed trace on JAX left the model unable to ``predict`` after."""
    try:
        declared = tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        return  # a model that declares no input
    first = first_inputs(data)
    if first is None or len(model.inputs) != 1:
        return
    got = tuple(first.shape[1:])
    if len(got) != len(declared) or any(d is not None and d != g for d, g in zip(declared, got)):
        raise ValueError(f"`{argument}`: examples of shape {got}, but the model takes {declared}.")


def first_inputs_raw(data):
    """The inputs of the first batch as given (an array, a dict of them), for checks
    before any work: from an (x, y) pair, a tf.data.Dataset or a PyDataset (not from a
    generator, which reading would consume); None where they cannot be read without
    side effects."""
    inputs = None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], dict):
        inputs = data[0]
    elif is_pair(data):
        inputs = data[0][:64]
    elif isinstance(data, keras.utils.PyDataset):
        inputs = data[0][0]
    elif type(data).__module__.startswith("tensorflow") and hasattr(data, "take"):
        for batch in data.take(1):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    return inputs


def first_inputs(data):
    """``first_inputs_raw`` as a float32 array; None where it is none (or a dict)."""
    inputs = first_inputs_raw(data)
    return np.asarray(inputs, "float32") if hasattr(inputs, "shape") else None


def count_examples(data):
    if is_pair(data):
        return len(data[0])
    if isinstance(data, keras.utils.PyDataset) and data.num_batches is None:
        raise ValueError("`data` is a PyDataset without a number of batches (endless): the report "
                         "would never end. Give it a __len__ (num_batches), or pass arrays.")
    if hasattr(data, "as_numpy_iterator"):
        import tensorflow as tf

        if int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError("`data` is an endless dataset (it repeats): the report would never end. "
                             "Pass a finite one, e.g. data.take(number_of_batches).")
        return sum(len(batch[1]) for batch in data.as_numpy_iterator())
    return None


def token_inputs(model, x=None):
    """Why ``model`` takes no continuous inputs to perturb — several named inputs (or
    batch ``x`` is a dict of them) or one declared integer input, e.g. keras-hub's
    token_ids and padding_mask — or ""."""
    named = []
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        inputs = []
    if len(inputs) > 1:
        named = [t.name for t in inputs]
    elif inputs and np.dtype(keras.backend.standardize_dtype(inputs[0].dtype)).kind in "biu":
        named = [f"{inputs[0].name} ({inputs[0].dtype})"]
    if isinstance(x, dict):  # (integer images, e.g. uint8 before a Rescaling layer, are fine)
        named = named or list(x)
    if not named:
        return ""
    return (f"the model takes {', '.join(named)}: integer token ids or several named inputs, which "
            "noise, corruptions and gradient attacks cannot perturb meaningfully (a token id plus "
            "noise is another word, or none). Perturb the embeddings instead: "
            "keras_lowrank.robustness.embedding_noise(model, stddev) returns the model with Gaussian "
            "noise on its token embeddings, to score with Keras' evaluate")


def refuse_token_inputs(model, x=None, caller="evaluate_robustness"):
    why = token_inputs(model, x)
    if why:
        raise ValueError(f"{caller}: {why}.")
