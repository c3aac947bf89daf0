"""``ClassifierView``: a Keras classifier as every attack and report sees it.

The one place that decides what a model outputs — logits, probabilities from a final
softmax, or probabilities made some other way — and from that what the attacks
differentiate and what the reports' losses take: the logits themselves, the input of
the final softmax (the softmax bypassed), or log p. ``_gradients`` holds the
mechanism (the forward pass without side effects, the bypass, the per-backend
gradient); this module holds the decisions.
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import seed_states
from keras_lowrank.robustness._gradients import (
    Oracle,
    compile_function,
    ends_in_softmax,
    forward_without_side_effects,
)


def outputs_logits(model):
    """True unless the model's last layer applies a softmax (``ends_in_softmax``)."""
    return not ends_in_softmax(model)


def are_probabilities(outputs, tolerance=1e-4):
    """Every row of ``outputs`` in [−tolerance, 1 + tolerance] and summing to 1 within
    ``tolerance`` (float32 rounding of a softmax: 1e-4; AutoAttack's
    ``check_range_output`` uses 1e-5)."""
    outputs = np.asarray(outputs, "float64").reshape(len(outputs), -1)
    return bool(outputs.size and outputs.min() > -tolerance and outputs.max() < 1 + tolerance
                and np.all(np.abs(outputs.sum(axis=-1) - 1.0) < tolerance))


def resolve_from_logits(model, from_logits, x=None, argument="from_logits"):
    """The one answer to "does ``model`` output logits?", for every attack and report.

    ``None``: logits unless the model's last layer applies a softmax. A value the
    user gave is checked against the model and refused where it contradicts it:
    ``True`` on a model ending in a softmax, or (given a batch ``x``) ``True`` where
    every output row is a probability vector, ``False`` where they are not — an
    attack would otherwise optimise the wrong loss and report robustness that is
    not there.

    Returns:
        bool: whether the model's outputs are treated as logits.
    """
    if from_logits is None:
        return outputs_logits(model)
    from_logits = bool(from_logits)
    if from_logits and ends_in_softmax(model):
        raise ValueError(
            f"`{argument}=True`, but the model ends in a softmax: it outputs probabilities. "
            f"Leave `{argument}=None` (the attack then works on the softmax's input, its logits).")
    if x is not None:
        outputs = np.asarray(ops.convert_to_numpy(forward_without_side_effects(model, x[:64])))
        if not np.all(np.isfinite(outputs)):
            return from_logits  # NaN inputs: the input checks that follow name them
        probabilities = are_probabilities(outputs)
        if from_logits and probabilities:
            raise ValueError(
                f"`{argument}=True`, but every output row of the model is non-negative and sums to 1: "
                f"it outputs probabilities. Pass `{argument}=False` (or None for a model ending in a softmax).")
        if not from_logits and not probabilities:
            raise ValueError(
                f"`{argument}=False`, but the model's outputs are not probabilities (rows with negative "
                f"values or not summing to 1): pass `{argument}=True` or None.")
    return from_logits


def predicted_classes(model, x):
    """The model's predicted classes at ``x`` (int32), in inference mode: the labels an
    attack given none takes (as cleverhans does)."""
    return ops.cast(ops.argmax(forward_without_side_effects(model, x), axis=-1), "int32")


_COMPILED_SCORES = weakref.WeakKeyDictionary()


class ClassifierView:
    """A classifier and what its outputs are, decided once (``resolve_from_logits``).

    Attributes:
        model: the Keras model.
        from_logits: whether the model's outputs are logits.
        softmax_bypassed: the model ends in a softmax, and the attacks work on that
            softmax's input (the cross-entropy of saturated float32 probabilities
            has no gradient: ``_gradients._final_softmax_removed``).
        how: "logits", "softmax bypassed" or "log p" (probabilities made some other
            way: the attacks take their log, logits up to a per-example shift).
    """

    def __init__(self, model, from_logits=None):
        self.model = model
        self.from_logits = resolve_from_logits(model, from_logits)
        self.softmax_bypassed = not self.from_logits and ends_in_softmax(model)
        self.how = "logits" if self.from_logits else "softmax bypassed" if self.softmax_bypassed else "log p"
        self._key = from_logits
        self._random = None  # random layers (each ``draw`` a pass of its own): asked on first use

    def scores(self, x, draw=None):
        """The scores the attacks' margins and DLR losses take (float32): the logits, the
        bypassed softmax's input, or log p. ``draw``: as ``forward_without_side_effects``'
        (a model with random layers draws anew per ``draw``)."""
        if self._random is None:
            self._random = bool(seed_states(self.model))
        draw = draw if self._random else None  # else every draw is the same pass
        out = ops.cast(forward_without_side_effects(self.model, x, self.softmax_bypassed, draw), "float32")
        if self.from_logits or self.softmax_bypassed:
            return out
        return ops.log(ops.maximum(out, 1e-30))

    def compiled_scores(self):
        """``scores`` compiled (one graph per model and ``from_logits``, for all attacks)."""
        per_model = _COMPILED_SCORES.setdefault(self.model, {})
        if self._key not in per_model:
            per_model[self._key] = compile_function(self.model, self.scores)
        return per_model[self._key]

    def cross_entropy_oracle(self, targeted=False):
        """The ``Oracle`` of the cross-entropy (negated for a targeted attack, so larger
        is always better) of the model's logits — those of a model ending in a
        softmax taken before it — or, for probabilities made otherwise, Keras'
        cross-entropy of the probabilities."""
        from_logits = self.from_logits or self.softmax_bypassed
        sign = -1.0 if targeted else 1.0

        def loss_fn(y, outputs):
            return sign * keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=from_logits)

        return Oracle(self.model, loss_fn, logits=self.softmax_bypassed)

    def evaluation_loss(self, one_hot):
        """The loss a report's ``evaluate`` is compiled with (its accuracy is what is read)."""
        if one_hot:
            return keras.losses.CategoricalCrossentropy(from_logits=self.from_logits)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)
