"""Dimensionality of the representation change a perturbation causes
(keras_lowrank/methods.md §4; Leavitt & Morcos 2020).

For inputs x, perturbed inputs x + δ (δ from an attack, noise or a
corruption) and a layer f, the dimensionality is the number of principal
components of Δ = f(x + δ) − f(x) (flattened, over the dataset) that explain a
fraction ``threshold`` of its variance. The covariance of Δ is accumulated
batch by batch (``representation._SecondMoments``), so memory is O(m²) per
layer whatever the number of samples.
"""

import numpy as np
from keras import ops

from keras_lowrank.analysis._batches import iterate_labelled
from keras_lowrank.analysis.representation import _SecondMoments, feature_extractor, ranks_from_moments
from keras_lowrank.analysis.selectivity import selectivity_layers


def _perturb(perturbation, model, x, y):
    if callable(perturbation):  # attacks: one compiled graph per batch
        return perturbation(model, x, y)
    if hasattr(perturbation, "perturb_in_graph"):  # noise, corruptions (keras.ops)
        return perturbation.perturb_in_graph(model, x, y)
    raise ValueError("`perturbation` must be an attack (FGSM, PGD, ...) or an object with "
                     f"perturb_in_graph(model, x, y), got {type(perturbation).__name__}.")


def perturbation_dimensionality(model, data, perturbation, layers=None, threshold=0.95,
                                max_batches=None, batch_size=256, max_features=8192):
    """Per layer, the number of principal components explaining ``threshold`` of
    the variance of f(x + δ) − f(x).

    Args:
        model: a built Keras model (functional, or Sequential with an Input).
        data: tf.data.Dataset or iterable of (x, y) batches, or an (x, y) pair
            of arrays (the labels feed attacks).
        perturbation: an attack (``FGSM``, ``PGD``, ``CleverhansAttack``),
            ``GaussianNoise``, a ``Corruption``, or any callable
            ``perturbation(model, x, y) → x + δ``.
        layers: layer names or layers; default: every post-ReLU layer except
            the output layer (in a model without ReLU, every layer whose
            activation is bounded below, as ``class_selectivity``).
        threshold: fraction of variance in (0, 1].
        max_batches: stop after this many batches.
        batch_size: batch size for an (x, y) pair of arrays.
        max_features: refuse layers wider than this (the covariance is m × m).

    Returns:
        dict layer name → ``RepresentationRanks`` of Δ: ``variance_rank`` is the
        dimensionality; its spectrum, effective and stable rank come with it.

    Examples:
        noise on the first input only moves a ReLU layer along one direction.

        >>> import keras
        >>> inputs = keras.Input((3,))
        >>> hidden = keras.layers.Dense(5, activation="relu", kernel_initializer="ones", name="h")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
        >>> x = np.ones((64, 3), "float32")
        >>> along_first = lambda model, x, y: x + np.eye(3, dtype="float32")[0] * np.random.default_rng(0).normal(
        ...     size=(len(x), 1)).astype("float32") * 0.1
        >>> perturbation_dimensionality(model, (x, np.zeros(64)), along_first)["h"].variance_rank
        1
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"`threshold` must lie in (0, 1], got threshold={threshold!r}.")
    layers = selectivity_layers(model, layers)
    for layer in layers:
        width = int(np.prod(layer.output.shape[1:]))
        if width > max_features:
            raise ValueError(f"Layer {layer.name!r} has {width} features per sample, more "
                             f"than max_features={max_features}; choose other layers or "
                             "raise max_features.")
    extractor = feature_extractor(model, layers)
    moments = [_SecondMoments(center=True) for _ in layers]
    for x, y in iterate_labelled(data, batch_size, max_batches):
        perturbed = np.asarray(ops.convert_to_numpy(_perturb(perturbation, model, x, y)), x.dtype)
        both = extractor.predict_on_batch(np.concatenate([x, perturbed]))
        both = both if isinstance(both, (list, tuple)) else [both]
        for acc, out in zip(moments, both):
            out = np.asarray(out, np.float64).reshape(2 * len(x), -1)
            acc.update(out[len(x):] - out[: len(x)])
    return ranks_from_moments(layers, moments, threshold)
