"""What AutoAttack's attacks share: the model's scores, one compiled function per model,
and the base class of attacks made of runs on the examples no earlier run broke."""

import weakref

import numpy as np
from keras import ops

from keras_lowrank.robustness._classifier import ClassifierView
from keras_lowrank.robustness._gradients import compile_function
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.attacks.base import Attack
from keras_lowrank.robustness.attacks.losses import (
    _per_example,
)


def _refuse_targeted(name, targeted, why):
    """``targeted=True`` where an attack cannot honour it is an error, not a silent
    untargeted run that takes the target classes for true labels."""
    if targeted:
        raise ValueError(
            f"{name} takes no `targeted=True`: {why}. For an attack towards classes you "
            "choose, use PGD(eps, targeted=True) or FGSM(eps, targeted=True) with y the target "
            "classes; for AutoAttack's targeted stage, APGDT(eps).")


def _bucket(n, full):
    """Rows a subset of n examples is padded to: the next power of two, at most
    ``full`` (JAX compiles once per shape; this bounds the shapes to log₂ full)."""
    return min(full, 1 << max(n - 1, 0).bit_length())


def _padded(rows, size):
    """Indices ``rows`` padded to ``size`` by repeating the first."""
    return np.concatenate([rows, np.full(size - len(rows), rows[0], rows.dtype)])


class _CompiledPerModel:
    """One compiled function per model (weakly keyed), built on first use."""

    def __init__(self, build):
        self._build = build
        self._cache = weakref.WeakKeyDictionary()

    def __call__(self, model):
        fn = self._cache.get(model)
        if fn is None:
            fn = self._cache[model] = self._build(model)
        return fn


class _RunsOnUnbroken(Attack):
    """An attack made of compiled runs (targets, restarts), each on the examples
    no earlier run broke. Subclasses give ``_run_keys(num_classes)`` (one int per
    run), ``_run(scores, x, y, key, noise) -> (found, broken)`` in graph ops,
    ``_noise(x)`` (the run's random draws) and ``_check_inputs``."""

    def _run_keys(self, num_classes):
        return [0]

    def _check_inputs(self, num_classes, shape):
        pass

    def _build_compiled(self, model):
        scores = ClassifierView(model, self.from_logits).scores
        return compile_function(model, lambda x, y, key, noise: self._run(scores, x, y, key, noise))

    def __call__(self, model, x, y=None):
        """Adversarial examples for the batch ``x`` (``y``: true labels, integer or
        one-hot; default the model's predictions); x where the attack found none.
        Each run covers only the examples not yet broken (padded to a power-of-two
        batch, so JAX compiles few shapes)."""
        refuse_token_inputs(model, x, type(self).__name__)
        x = ops.convert_to_tensor(x, "float32")
        num_classes = self._num_classes(model, x)
        self._check_inputs(num_classes, tuple(x.shape[1:]))
        self._check_range(x)
        y = np.asarray(ops.convert_to_numpy(self._labels(model, x, y, num_classes)))
        x_np = np.asarray(ops.convert_to_numpy(x))
        scores = ClassifierView(model, self.from_logits).compiled_scores()
        predicted = np.asarray(ops.convert_to_numpy(scores(x))).argmax(axis=1)
        adversarial = x_np.copy()
        robust = predicted == y
        run = self._runs(model)
        for key in self._run_keys(num_classes):
            rows = np.flatnonzero(robust)
            if not len(rows):
                break
            padded = _padded(rows, _bucket(len(rows), len(x_np)))
            xs = ops.convert_to_tensor(x_np[padded])
            found, broken = run(xs, ops.convert_to_tensor(y[padded]), ops.convert_to_tensor(key, "int32"),
                                self._noise(xs))
            found = np.asarray(ops.convert_to_numpy(found))[:len(rows)]
            broken = np.asarray(ops.convert_to_numpy(broken))[:len(rows)]
            adversarial[rows[broken]] = found[broken]
            robust[rows[broken]] = False
        return adversarial

    def perturb_in_graph(self, model, x, y=None):
        """All runs inside the step being compiled (for ``PerturbedModel``): each
        covers the whole batch, and an example keeps the first run's adversarial
        that breaks it."""
        scores = ClassifierView(model, self.from_logits).scores
        clean = scores(x)
        if y is None:
            y = ops.argmax(clean, axis=-1)
        y = ops.cast(y, "int32")
        self._check_inputs(clean.shape[-1], tuple(x.shape[1:]))
        adversarial = x
        robust = ops.equal(ops.cast(ops.argmax(clean, axis=-1), "int32"), y)
        for key in self._run_keys(clean.shape[-1]):
            found, broken = self._run(scores, x, y, key, self._noise(x))
            broken = ops.logical_and(robust, broken)
            adversarial = ops.where(_per_example(broken, x), found, adversarial)
            robust = ops.logical_and(robust, ops.logical_not(broken))
        return adversarial
