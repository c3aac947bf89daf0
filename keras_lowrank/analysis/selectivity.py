"""Class selectivity of units (keras_lowrank/methods.md §4; Leavitt & Morcos 2020).

For a unit with class-conditional mean activations μ_c (post-ReLU; conv maps
averaged over space first), μ_max = max_c μ_c and μ_−max the mean of the
other classes' means:

    SI = (μ_max − μ_−max) / (μ_max + μ_−max + ε),   ε = 1e-7.

SI is 0 for a unit that responds equally to every class and 1 for a unit that
responds to one class only. ``class_selectivity_index`` is written in
``keras.ops`` (differentiable; the regularizer uses it per minibatch);
``class_selectivity`` streams a whole dataset and accumulates the class sums in
float64, so every class mean uses every sample.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_int
from keras_lowrank.analysis._batches import iterate_labelled
from keras_lowrank.analysis.representation import feature_extractor, resolve_layers
from keras_lowrank.precision import float32_matmuls

EPSILON = 1e-7
_ABSENT = -1e30  # stands for −∞ in the max over classes, with a finite gradient


def unit_activations(activations):
    """(n, units): conv maps (n, ..., channels) averaged over their positions."""
    activations = ops.convert_to_tensor(activations)
    if len(activations.shape) < 2:
        raise ValueError("`activations` must be (samples, units) or (samples, ..., "
                         f"channels), got shape {tuple(activations.shape)}.")
    if len(activations.shape) > 2:
        activations = ops.mean(activations, axis=tuple(range(1, len(activations.shape) - 1)))
    return activations


def _labels_as_indices(labels, num_classes):
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        return ops.argmax(labels, axis=-1)  # one-hot
    return ops.reshape(ops.cast(labels, "int32"), (-1,))


def _checked_label_array(y, num_classes, argument="`data`: labels"):
    """Integer labels (numpy) from integer or one-hot ``y``; a ValueError for
    labels that are not integers in [0, num_classes) (3.7 would be truncated)."""
    y = np.asarray(ops.convert_to_numpy(y))
    if y.ndim == 2 and y.shape[-1] == num_classes and num_classes > 1:
        return y.argmax(axis=-1)
    y = y.reshape(-1)
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))
                   or y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{argument} must be integer classes in [0, {num_classes}) or "
                         f"one-hot rows, got values from {y.min()} to {y.max()}.")
    return y.astype("int64")


def _check_concrete_batch(activations, labels, num_classes):
    """For values at hand (not traced): labels that are classes, and finite,
    non-negative activations — SI's denominator μ_max + μ_−max can vanish or turn
    negative otherwise, giving any number without a word."""
    try:
        values = np.asarray(ops.convert_to_numpy(activations))
        y = ops.convert_to_numpy(labels)
    except Exception:  # traced inside a step of the caller's own: not checked here
        return
    _checked_label_array(y, num_classes, "`labels`")
    if not np.all(np.isfinite(values)):
        raise ValueError("`activations` hold NaN or infinite values.")
    if values.size and values.min() < 0:
        raise ValueError(
            f"`activations` must be non-negative (post-ReLU), got a minimum of {values.min():.4g}: "
            "with negative means SI is not a selectivity. For an activation bounded below "
            "(GELU, swish) subtract its infimum first, as class_selectivity does.")


def selectivity_from_class_means(means, present, epsilon=EPSILON):
    """SI per unit from class means (C, units) and a (C,) mask of the classes seen."""
    present = ops.cast(present, means.dtype)[:, None]
    mu_max = ops.max(ops.where(present > 0, means, _ABSENT), axis=0)
    others = ops.maximum(ops.sum(present) - 1.0, 1.0)
    mu_rest = (ops.sum(means * present, axis=0) - mu_max) / others
    return (mu_max - mu_rest) / (mu_max + mu_rest + epsilon)


def class_selectivity_index(activations, labels, num_classes, epsilon=EPSILON):
    """Class selectivity index of every unit of one batch of activations.

    Args:
        activations: (n, units) or conv maps (n, ..., channels), non-negative
            (post-ReLU); conv maps are averaged over space.
        labels: (n,) integer labels or (n, num_classes) one-hot.
        num_classes: the number of classes C.
        epsilon: ε of the denominator.

    Returns:
        (units,) tensor of SI in [0, 1] for non-negative activations. Classes
        absent from the batch are left out of μ_max and μ_−max.

    Examples:
        a unit active for class 0 only has SI 1, one equally active for
        both classes SI 0.

        >>> a = np.array([[1.0, 1.0], [0.0, 1.0]], "float32")
        >>> np.round(ops.convert_to_numpy(class_selectivity_index(a, [0, 1], 2)), 4).tolist()
        [1.0, 0.0]
    """
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    _check_concrete_batch(activations, labels, num_classes)
    return _selectivity_index(activations, labels, num_classes, epsilon)


@float32_matmuls()
def _selectivity_index(activations, labels, num_classes, epsilon=EPSILON):
    """``class_selectivity_index`` without its host-side checks (the regularizer's
    minibatches, traced; their offsets make them non-negative)."""
    activations = unit_activations(activations)
    labels = _labels_as_indices(labels, num_classes)
    if labels.shape[0] is not None and activations.shape[0] is not None and (
            labels.shape[0] != activations.shape[0]):
        raise ValueError(f"`labels` has {labels.shape[0]} samples but `activations` has "
                         f"{activations.shape[0]}.")
    onehot = ops.one_hot(labels, num_classes, dtype=activations.dtype)
    counts = ops.sum(onehot, axis=0)
    means = ops.matmul(ops.transpose(onehot), activations) / ops.maximum(counts, 1.0)[:, None]
    return selectivity_from_class_means(means, counts > 0, epsilon)


def is_relu_layer(layer):
    """True for layers whose output is post-ReLU (ReLU, Activation("relu"), or
    a layer with activation="relu")."""
    if isinstance(layer, keras.layers.ReLU):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.relu or getattr(activation, "__name__", "") == "relu"


_GRID = np.linspace(-50.0, 50.0, 200_001, dtype="float32")


def activation_floor(layer):
    """The infimum of ``layer``'s output activation if it is bounded below, else None.

    0 for ReLU, sigmoid, softplus; ≈ −0.170 for GELU, ≈ −0.278 for swish/SiLU,
    ≈ −0.309 for mish, −1 for ELU and tanh, ≈ −1.758 for SELU; None for a linear
    layer, leaky ReLU or a layer without ``activation``. Found on a grid over
    [−50, 50]; the function counts as bounded below when it has stopped falling
    towards −∞ (f(−50) − f(−25) > −1e-4; softsign, which approaches −1 slowly, does not).

    Args:
        layer: a Keras layer (``activation=`` of Dense/Conv layers, ``Activation``,
            ``ReLU``).

    Returns:
        the infimum as a float, or None.

    Examples:

        >>> round(activation_floor(keras.layers.Dense(2, activation="gelu")), 3)
        -0.17
        >>> activation_floor(keras.layers.Dense(2)) is None
        True
    """
    if isinstance(layer, keras.layers.ReLU):
        return 0.0 if not getattr(layer, "negative_slope", 0.0) else None
    activation = getattr(layer, "activation", None)
    if activation is None or activation is keras.activations.linear or not callable(activation):
        return None
    try:
        values = np.asarray(ops.convert_to_numpy(activation(ops.convert_to_tensor(_GRID))), np.float64)
    except Exception:  # not elementwise on a vector (e.g. softmax over an axis): no floor
        return None
    if values.shape != _GRID.shape or not np.all(np.isfinite(values)):
        return None
    if values[0] - values[len(values) // 4] < -1e-4:  # still falling at −50: unbounded
        return None
    return float(min(values.min(), 0.0))


def selectivity_layers(model, layers=None):
    """The layers to measure: those given (names or layers); by default every
    post-ReLU layer except the model's output layer, or, in a model without
    ReLU (GELU, swish, …), every layer whose activation is bounded below
    (``activation_floor``) except the output layer."""
    if layers is not None:
        return resolve_layers(model, layers)
    output_names = {getattr(t, "_keras_history", [None])[0].name
                    for t in model.outputs} if model.outputs else set()
    candidates = [layer for layer in model.layers if layer.name not in output_names]
    chosen = [layer for layer in candidates if is_relu_layer(layer)]
    if not chosen:
        chosen = [layer for layer in candidates if activation_floor(layer) is not None]
    if not chosen:
        raise ValueError(f"`layers`: model {model.name!r} has no layer with a ReLU or another "
                         "activation bounded below to measure; pass the layer names.")
    return chosen


def selectivity_offsets(layers):
    """What ``class_selectivity`` and the regularizer add to each layer's outputs:
    −(activation floor) where the activation is bounded below with a negative
    infimum (so "off" is 0, as after a ReLU), else 0."""
    return [-(activation_floor(layer) or 0.0) for layer in layers]


def num_classes_of(model, num_classes=None):
    if num_classes is not None:
        return num_classes
    width = model.outputs[0].shape[-1] if model.outputs else None
    if not width or width < 2:
        raise ValueError("`num_classes`: cannot infer it from the model's output shape "
                         f"{getattr(model.outputs[0], 'shape', None)}; pass num_classes.")
    return int(width)


@dataclasses.dataclass
class LayerSelectivity:
    """Class selectivity of one layer's units over a dataset (in a ``SelectivitySummary``).

    Attributes:
        layer: the layer's name.
        index: SI per unit (numpy).
        num_samples: samples seen.
        dead_units: units that are 0 on every sample (their SI is 0).
        offset: added to the outputs before the class means: −(the activation's
            floor) for activations bounded below with a negative infimum
            (``activation_floor``: 0.17 for GELU), else 0.

    Examples:

        >>> round(LayerSelectivity("relu", np.array([0.2, 0.4]), num_samples=10).mean, 4)
        0.3
    """

    layer: str
    index: np.ndarray  # SI per unit
    num_samples: int
    dead_units: int = 0  # units that are 0 on every sample (their SI is 0)
    offset: float = 0.0  # added to the outputs first: −(activation floor), e.g. 0.17 for GELU

    @property
    def mean(self):
        return float(np.mean(self.index))

    @property
    def median(self):
        return float(np.median(self.index))

    def as_dict(self):
        return {"layer": self.layer, "num_samples": self.num_samples, "mean": self.mean,
                "median": self.median, "dead_units": self.dead_units, "offset": self.offset,
                "index": self.index.tolist()}


@dataclasses.dataclass
class SelectivitySummary:
    """Per-layer class selectivity of a model (``class_selectivity``'s result);
    ``mean`` averages the layers' means (the quantity the regularizer acts on).

    Attributes:
        layers: dict layer name → ``LayerSelectivity``.

    Examples:

        >>> summary = SelectivitySummary({"a": LayerSelectivity("a", np.array([0.2]), 4),
        ...                               "b": LayerSelectivity("b", np.array([0.6]), 4)})
        >>> round(summary.mean, 4)
        0.4
    """

    layers: dict

    @property
    def mean(self):
        return float(np.mean([s.mean for s in self.layers.values()]))

    def as_dict(self):
        return {"mean": self.mean, "layers": [s.as_dict() for s in self.layers.values()]}

    def to_markdown(self):
        lines = ["| layer | units | dead units | mean SI | median SI |", "|---|---|---|---|---|"]
        lines += [f"| {s.layer} | {len(s.index)} | {s.dead_units} | {s.mean:.3f} | {s.median:.3f} |"
                  for s in self.layers.values()]
        lines.append(f"| **mean** | | | **{self.mean:.3f}** | |")
        return "\n".join(lines)


@float32_matmuls()
def class_selectivity(model, data, layers=None, num_classes=None, max_batches=None,
                      batch_size=256):
    """Class selectivity of each unit of ``layers`` over a labelled dataset.

    Class means are accumulated over the whole dataset (float64 sums), then
    SI per unit as in ``class_selectivity_index``.

    Args:
        model: a built Keras classifier.
        data: tf.data.Dataset or iterable of (x, y) batches, or an (x, y) pair
            of arrays; integer or one-hot labels.
        layers: layer names or layers; default: every post-ReLU layer but the
            output layer — or, without ReLU, every layer whose activation is
            bounded below (GELU, swish, ELU, tanh, …), measured on its outputs
            minus the activation's floor so that "off" is 0 as after a ReLU.
        num_classes: default: the width of the model's output.
        max_batches: stop after this many batches.
        batch_size: batch size for an (x, y) pair of arrays.

    Returns:
        ``SelectivitySummary`` (per-layer ``LayerSelectivity``, ``mean``,
        ``to_markdown()``, ``as_dict()``).

    Examples:

        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
        ...                           keras.layers.Dense(3)])
        >>> x = np.random.default_rng(0).uniform(size=(30, 4)).astype("float32")
        >>> summary = class_selectivity(model, (x, np.arange(30) % 3))
        >>> list(summary.layers), 0.0 <= summary.mean <= 1.0
        (['hidden'], True)

    References:
        - Leavitt & Morcos, "Selectivity considered harmful: evaluating the causal impact of class
          selectivity in DNNs", ICLR 2021: https://arxiv.org/abs/2003.01262
        - Leavitt & Morcos, "On the relationship between class selectivity, dimensionality, and
          robustness": https://arxiv.org/abs/2007.04440
    """
    num_classes = num_classes_of(model, num_classes)
    layers = selectivity_layers(model, layers)
    offsets = selectivity_offsets(layers)
    extractor = feature_extractor(model, layers)
    sums = [None] * len(layers)
    counts = np.zeros(num_classes)
    for x, y in iterate_labelled(data, batch_size, max_batches):
        labels = _checked_label_array(y, num_classes)
        onehot = np.eye(num_classes)[labels]
        counts += onehot.sum(axis=0)
        outputs = extractor.predict_on_batch(x)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, (layer, out) in enumerate(zip(layers, outputs)):
            units = np.asarray(ops.convert_to_numpy(unit_activations(out)), np.float64) + offsets[i]
            if units.min() < -1e-6:
                raise ValueError(f"Layer {layer.name!r} has negative outputs; class selectivity "
                                 "is defined for non-negative activations (post-ReLU, or shifted by "
                                 "the floor of an activation bounded below, such as GELU); name "
                                 "layers with such an activation.")
            batch_sums = onehot.T @ units
            sums[i] = batch_sums if sums[i] is None else sums[i] + batch_sums
    if not counts.sum():
        raise ValueError("`data` yielded no batches.")
    if np.count_nonzero(counts) < 2:
        raise ValueError("`data` holds examples of one class only; class selectivity compares "
                         "a unit's mean over classes and needs at least two.")
    present = counts > 0
    result = {}
    for layer, total, offset in zip(layers, sums, offsets):
        means = total / np.maximum(counts, 1.0)[:, None]
        index = selectivity_from_class_means(
            ops.convert_to_tensor(means, "float32"), ops.convert_to_tensor(present))
        result[layer.name] = LayerSelectivity(
            layer.name, np.asarray(ops.convert_to_numpy(index), np.float64), int(counts.sum()),
            dead_units=int(np.sum(np.all(total <= 0, axis=0))), offset=offset)
    return SelectivitySummary(result)
