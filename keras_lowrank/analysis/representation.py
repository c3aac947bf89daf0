"""Streaming rank measures of a model's layer outputs over a dataset.

Per chosen layer, second moments are accumulated batch by batch — the scatter
Σ (a − c)(a − c)ᵀ and Σ (a − c) around a fixed shift c (the first batch's mean,
which avoids the cancellation of Σ a aᵀ − n μ μᵀ) — so memory is O(m²) per layer
whatever the number of samples (O(n·m) while n < m: the rows themselves). The eigenvalues λ of the scatter give the
singular values √λ of the (centred) activation matrix, and from them the ranks
of keras_lowrank/methods.md §5.
"""

import dataclasses
import warnings

import keras
import numpy as np

from keras_lowrank._keras_compat import layer_paths
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.analysis._batches import iterate_inputs
from keras_lowrank.analysis.ranks import (
    effective_rank_from_singular_values,
    stable_rank_from_singular_values,
    variance_rank_from_singular_values,
)


@dataclasses.dataclass
class RepresentationRanks:
    """Spectrum and ranks of one layer's output over a dataset
    (``representation_ranks``' and ``perturbation_dimensionality``'s result).

    Attributes:
        layer: the layer's name.
        num_samples: samples seen.
        num_features: the representation's width m.
        singular_values: its spectrum (numpy, descending).
        effective_rank: exp(H(p)) of the spectrum.
        stable_rank: Σσ² / σ_max².
        variance_rank: leading directions holding ``threshold`` of Σσ².
        threshold: the variance fraction of ``variance_rank``.
        flattened: True if a sample's whole output was one vector, False if each
            position's channel vector was a sample (wide conv maps).

    Examples:

        >>> r = RepresentationRanks.from_singular_values("f", 10, np.array([1.0, 1.0]), 0.99)
        >>> r.effective_rank, r.variance_rank
        (2.0, 2)
    """

    layer: str
    num_samples: int
    num_features: int
    singular_values: np.ndarray
    effective_rank: float
    stable_rank: float
    variance_rank: int
    threshold: float
    flattened: bool = True

    @classmethod
    def from_singular_values(cls, layer, num_samples, s, threshold, flattened=True):
        return cls(layer=layer, num_samples=num_samples, num_features=len(s),
                   singular_values=s,
                   effective_rank=effective_rank_from_singular_values(s),
                   stable_rank=stable_rank_from_singular_values(s),
                   variance_rank=variance_rank_from_singular_values(s, threshold),
                   threshold=threshold, flattened=bool(flattened))

    def as_dict(self):
        record = dataclasses.asdict(self)
        record["singular_values"] = self.singular_values.tolist()
        return record


# flatten="auto": the widest map measured as whole vectors. Each layer keeps an m × m
# float64 scatter: 8192 features cost 512 MiB and a 10-second eigendecomposition, and
# EfficientNetB0's default layers at 32×32 then took 12 GiB and 19 minutes
# (docs/benchmarks.md); at 2048, 32 MiB.
_AUTO_WHOLE = 2048


class _SecondMoments:
    """Shifted second moments of the rows of successive (n_b × m) batches.

    Accumulated in float64 numpy: sums over many batches of float32 products
    lose the small eigenvalues that the variance rank depends on. While fewer
    rows than features have been seen, the rows themselves are kept (n × m <
    m × m) and the spectrum comes from their n × n Gram matrix — the same
    nonzero singular values, the rest exactly 0 — so a few samples of a wide
    layer cost neither an m × m scatter nor its eigendecomposition; at m rows
    they are folded into the scatter.
    """

    def __init__(self, center):
        self.center = center
        self.count = 0
        self.shift = None
        self.total = None
        self.scatter = None
        self.rows = []

    def update(self, batch):
        batch = np.asarray(batch, dtype=np.float64)
        if self.shift is None:
            m = batch.shape[1]
            self.shift = batch.mean(axis=0) if self.center else np.zeros(m)
            self.total = np.zeros(m)
        if not np.all(np.isfinite(batch)):
            raise ValueError("The model's activations hold NaN or infinite values (non-finite "
                             "inputs or weights); spectra and ranks are undefined.")
        shifted = batch - self.shift
        self.count += len(batch)
        self.total += shifted.sum(axis=0)
        if self.scatter is not None:
            self.scatter += shifted.T @ shifted
            return
        self.rows.append(shifted)
        if self.count >= len(self.shift):  # as many rows as features: the scatter is smaller
            rows = np.concatenate(self.rows)
            self.scatter, self.rows = rows.T @ rows, []

    def singular_values(self):
        m = len(self.shift)
        if self.scatter is None:  # fewer rows than features
            rows = np.concatenate(self.rows)
            if self.center:
                rows = rows - self.total / self.count
            eigenvalues = np.linalg.eigvalsh(rows @ rows.T)[::-1]
            values = np.sqrt(np.clip(eigenvalues, 0.0, None))
            return np.concatenate([values, np.zeros(m - len(values))])
        scatter = self.scatter
        if self.center:
            mean = self.total / self.count
            scatter = scatter - self.count * np.outer(mean, mean)
        eigenvalues = np.linalg.eigvalsh(scatter)[::-1]
        return np.sqrt(np.clip(eigenvalues, 0.0, None))


def ranks_from_moments(layers, moments, threshold, flattened=None):
    """{layer name: RepresentationRanks} from each layer's accumulated moments
    (``flattened``: per layer, whether its samples were whole outputs; default all)."""
    if moments[0].count == 0:
        raise ValueError("`data` yielded no batches.")
    if moments[0].count < 2:
        raise ValueError(f"`data` holds {moments[0].count} sample; ranks of a representation "
                         "need at least 2 (the covariance of one sample is 0).")
    flattened = [True] * len(layers) if flattened is None else flattened
    return {layer.name: RepresentationRanks.from_singular_values(
                layer.name, acc.count, acc.singular_values(), threshold, flat)
            for layer, acc, flat in zip(layers, moments, flattened)}


def _single_output(layer):
    """Whether ``layer`` has one output tensor in its model's graph to measure (not a
    dict or list of them, e.g. a keras-hub backbone's; not a layer called twice)."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return False
    return hasattr(output, "shape") and not isinstance(output, (list, tuple, dict))


def resolve_layers(model, layers):
    """Layer objects from names, paths (``"bert_backbone/transformer_layer_0"``: a layer
    of a nested model) or layers; default: the model's own layers with one output
    tensor, but input layers."""
    if layers is None:
        return [
            layer for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer) and _single_output(layer)
        ]
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("`layers` is empty: name at least one layer, or pass None for the "
                         "default.")
    names = [layer.name for layer in model.layers]
    paths = dict(layer_paths(model))
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer in names:
                layer = model.get_layer(layer)
            elif layer in paths:
                layer = paths[layer]
            else:
                raise ValueError(
                    f"`layers`: no layer named {layer!r} in model "
                    f"{model.name!r}; its layers are {names} (a layer of a nested model by its "
                    "path, e.g. 'backbone/layer')."
                )
        if not _single_output(layer):
            raise ValueError(
                f"`layers`: layer {layer.name!r} has no single output tensor in the model's graph to "
                "measure: it returns a dict or list (name a layer inside it by its path), is called "
                "more than once, or sits inside a custom layer, whose sublayers have no graph tensors "
                "(measure the custom layer holding it).")
        resolved.append(layer)
    return resolved


def feature_extractor(model, layers):
    """A model from ``model``'s inputs to the outputs of ``layers``."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "The model must be built on a known input (a functional model, or a "
            "Sequential model starting with keras.Input) to read its layers."
        )
    try:
        return keras.Model(inputs, [layer.output for layer in layers])
    except ValueError as error:  # Keras: the graph is disconnected
        raise ValueError(
            f"The layers {[layer.name for layer in layers]} cannot be read from the model's inputs "
            f"({str(error).splitlines()[0][:200]}): a layer of a nested model is readable where the "
            "nested model is called on the outer model's own inputs (keras-hub's tasks on their "
            "backbone); else measure the nested model itself.") from error


def representation_ranks(
    model,
    data,
    layers=None,
    threshold=0.99,
    center=True,
    flatten="auto",
    max_batches=None,
    max_features=8192,
):
    """Spectra and ranks of the outputs of ``layers`` of ``model`` over ``data``.

    Args:
        model: a built Keras model.
        data: tf.data.Dataset of (x, y) or x, an iterable of batches, or an array.
        layers: layer names or layers (default: every non-input layer).
        threshold: the fraction of variance for the variance rank.
        center: subtract the mean activation (covariance spectrum, default) or
            not (spectrum of the raw activation matrix).
        flatten: True: flatten each sample's output (m = h·w·c for conv maps);
            False: the last axis is the features and other positions are samples;
            ``"auto"`` (default): whole outputs of ≤ 2048 features (and every
            (batch, features) output), channel vectors for wider maps (16×16×48
            at a MobileNet's second block): the scatter, its memory and its
            eigendecomposition stay ≤ max(2048, channels)² per layer; each result
            says which (``flattened``).
        max_batches: stop after this many batches.
        max_features: the widest representation measured (the scatter is m × m):
            a wider layer is refused, or, among the default layers with
            ``flatten="auto"``, left out with a warning naming it.

    Returns:
        dict layer name → ``RepresentationRanks``, in layer order.

    Examples:

        >>> import keras
        >>> inputs = keras.Input((6,))
        >>> features = keras.layers.Dense(2, name="narrow")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(8, name="wide")(features))
        >>> x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
        >>> {name: r.variance_rank for name, r in representation_ranks(model, x).items()}
        {'narrow': 2, 'wide': 2}
    """
    if not (flatten is True or flatten is False or flatten == "auto"):
        raise ValueError(f"`flatten` must be True, False or 'auto', got {flatten!r}.")
    chosen = layers
    layers, flat, too_wide = [], [], []
    for layer in resolve_layers(model, chosen):
        shape = layer.output.shape
        if any(d is None for d in shape[1:-1]):  # e.g. a sequence of any length: per position
            if flatten is True:
                raise ValueError(
                    f"Layer {layer.name!r} outputs {tuple(shape)}: its axes before the features have no "
                    "fixed size (a sequence of any length), so whole outputs are no fixed-size vectors; "
                    "pass flatten=False or 'auto' to measure each position's features.")
            layers.append(layer)
            flat.append(False)
            continue
        whole = int(np.prod(shape[1:]))
        if flatten == "auto":  # whole vectors up to _AUTO_WHOLE features; wider maps per position
            whole_vector = len(shape) <= 2 or whole <= min(_AUTO_WHOLE, max_features)
        else:
            whole_vector = flatten
        m = whole if whole_vector else shape[-1]
        if m > max_features:
            if chosen is None and flatten == "auto":  # the default layers: skipped, named
                too_wide.append(f"{layer.name} ({m})")
                continue
            raise ValueError(
                f"Layer {layer.name!r} has {m} features per {'sample' if whole_vector else 'channel vector'} "
                f"(output {tuple(shape)}), more than max_features={max_features}; "
                + ("pass flatten='auto' or False to measure channel vectors, or raise max_features."
                   if whole_vector else "raise max_features or leave the layer out of `layers`."))
        layers.append(layer)
        flat.append(whole_vector)
    if too_wide:
        warnings.warn(f"representation_ranks left out layers wider than max_features={max_features} "
                      f"even per channel vector: {', '.join(too_wide)}.", stacklevel=2, category=LowRankWarning)
    if not layers:
        raise ValueError(f"No layer of the model is narrow enough to measure (max_features={max_features}).")
    extractor = feature_extractor(model, layers)
    moments = [_SecondMoments(center) for _ in layers]
    for x in iterate_inputs(data, max_batches=max_batches):
        outputs = extractor.predict_on_batch(x)
        if len(layers) == 1 and not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        for acc, out, whole_vector in zip(moments, outputs, flat):
            out = np.asarray(out)
            out = out.reshape(len(out), -1) if whole_vector else out.reshape(-1, out.shape[-1])
            acc.update(out)
    return ranks_from_moments(layers, moments, threshold, flat)
