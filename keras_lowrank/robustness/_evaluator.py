"""The accuracy of one model under a report's perturbations, through Keras' own
``evaluate`` of a ``PerturbedModel`` (one compiled step shared where the perturbations
allow)."""

import keras
import numpy as np

from keras_lowrank.robustness._classifier import ClassifierView
from keras_lowrank.robustness._report_inputs import is_pair
from keras_lowrank.robustness._sweep import Sweep, sweep_group
from keras_lowrank.robustness.attacks import PGD
from keras_lowrank.robustness.perturbed_model import PerturbedModel


def arrays(data):
    """(x, integer labels) as numpy arrays, from a pair or an iterable of batches."""
    if is_pair(data):
        x, y = (np.asarray(keras.ops.convert_to_numpy(a)) for a in data)
    else:
        batches = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
        xs, ys = zip(*((np.asarray(b[0]), np.asarray(b[1])) for b in batches))
        x, y = np.concatenate(xs), np.concatenate(ys)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return x, y.reshape(-1)


class Evaluator:
    """Accuracy of one model under perturbations, through ``PerturbedModel.evaluate``.

    Clean, Gaussian-noise, FGSM and PGD rows all run in one
    ``PerturbedModel`` of a ``Sweep``: one parametrised step whose settings (σ, ε,
    step size, steps, start, projection, range) are variables assigned before each
    row, so Keras traces and compiles one test step for all of them (per norm,
    targeting and ``from_logits``) instead of one per kind — a large model's step
    takes seconds to minutes to compile. ``default_group`` is the step the clean
    and noise rows join: that of the first FGSM/PGD row, or none.

    Other perturbations of one class whose configurations differ only in their sizes
    (``Perturbation._sizes``: ε, step sizes, σ) share one ``PerturbedModel`` whose
    copy of the perturbation holds those sizes as variables: Keras traces and
    compiles its test step once for an ε-sweep, not once per ε (a large model's
    attack step takes seconds to minutes to compile). Before each row the sizes are
    assigned and the random generators reset to their initial state, so every row
    draws what a fresh object with that seed would (common random numbers across σ
    and ε)."""

    def __init__(self, model, from_logits, jit_compile, verbose, perturbations=()):
        self.model, self.view = model, ClassifierView(model, from_logits)
        self.jit_compile, self.verbose = jit_compile, verbose
        self._shared = {}
        self._pairs = {}
        groups = [self._group(p) for p in perturbations]
        self._restarts = {}  # per shared step, the most restarts of its PGD rows
        for group, perturbation in zip(groups, perturbations):
            if type(perturbation) is PGD:
                self._restarts[group] = max(self._restarts.get(group, 1), perturbation.restarts)
        # Without a gradient attack the clean and noise rows keep steps of their own:
        # the shared step holds the model's input gradient, which a model that is
        # not differentiable (a numpy_function inside) cannot trace.
        self.default_group = next((g for g in groups if g not in (None, "any")), None)

    def _group(self, perturbation):
        found = sweep_group(perturbation)
        if found in (None, "any"):
            return found
        norm, targeted, from_logits = found
        return norm, targeted, ClassifierView(self.model, from_logits).from_logits

    def accuracy(self, perturbation, data):
        wrapper = self._ready_wrapper(perturbation, _one_hot(data))
        inputs = self._pair_inputs(data) if is_pair(data) else {"x": data}
        result = wrapper.evaluate(**inputs, verbose=self.verbose, return_dict=True)
        return float(result["accuracy"])

    def _pair_inputs(self, pair):
        """``evaluate``'s arguments for ``pair`` padded (``_padded_pair``), made once per
        report: on TensorFlow a ``tf.data.Dataset`` of (x, y, sample weight) batches —
        from arrays Keras builds one at every ``evaluate``, tracing dataset functions
        again for every row (docs/benchmarks.md) — elsewhere the arrays and batch size
        (Keras' array adapter costs little there, and JAX users need not have
        TensorFlow)."""
        key = id(pair)
        if key not in self._pairs:
            x, y, weights, batch = _padded_pair(pair)
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                made = {"x": tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(batch)}
            else:
                made = {"x": x, "y": y, "sample_weight": weights, "batch_size": batch}
            self._pairs[key] = pair, made  # the pair held, so its id stays its own
        return self._pairs[key][1]

    def _ready_wrapper(self, perturbation, one_hot):
        """A wrapper set to compute ``perturbation``: the shared ``Sweep``, a shared
        wrapper with the sizes assigned, or one of its own."""
        found = self._group(perturbation)
        if found == "any":
            found = self.default_group
        if found is not None:
            key = ("sweep", found, one_hot)
            if key not in self._shared:
                self._shared[key] = self._wrapper(
                    Sweep(*key[1], max_restarts=self._restarts.get(found, 1)), one_hot)
            self._shared[key].perturbation.load(perturbation)
            return self._shared[key]
        key = self._key(perturbation, one_hot)
        if key is None:
            return self._wrapper(perturbation, one_hot)
        if key not in self._shared:
            self._shared[key] = self._sized_wrapper(perturbation, one_hot)
        wrapper, sizes, seeds = self._shared[key]
        for name, variable in sizes.items():
            variable.assign(float(getattr(perturbation, name)))
        for generator, state in seeds:
            generator.state.assign(state)
        return wrapper

    @staticmethod
    def _sizes(perturbation):
        # declared by the class itself: a subclass may use a size on the host
        return vars(type(perturbation)).get("_sizes", ())

    def _key(self, perturbation, one_hot):
        sizes = self._sizes(perturbation)
        if not sizes:
            return None
        try:
            config = perturbation.get_config()
        except NotImplementedError:
            return None
        rest = sorted((name, repr(value)) for name, value in config.items() if name not in sizes)
        return type(perturbation), tuple(rest), one_hot

    def _sized_wrapper(self, perturbation, one_hot):
        template = type(perturbation).from_config(perturbation.get_config())
        sizes = {}
        for name in self._sizes(perturbation):
            sizes[name] = keras.Variable(float(getattr(perturbation, name)), dtype="float32", trainable=False,
                                         name=name)
            setattr(template, name, sizes[name])
        seeds = [(g, keras.ops.convert_to_numpy(g.state)) for g in vars(template).values()
                 if isinstance(g, keras.random.SeedGenerator)]
        return self._wrapper(template, one_hot), sizes, seeds

    def _wrapper(self, perturbation, one_hot):
        wrapper = PerturbedModel(self.model, perturbation)
        loss = self.view.evaluation_loss(one_hot)
        metric = (keras.metrics.CategoricalAccuracy(name="accuracy") if one_hot
                  else keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
        # weighted: the padding of (x, y) pairs has weight 0 (`metrics=` would ignore it);
        # no optimizer: evaluate would build compile's default (RMSprop), a slot per weight
        # of the model — and on JAX one compiled program per weight shape
        wrapper.compile(optimizer=None, jit_compile=self.jit_compile, loss=loss, weighted_metrics=[metric])
        return wrapper


_PAIR_BATCH = 256


def _padded_pair(data):
    """(x, y) padded to a whole number of equal batches, the padding weighted 0.

    JAX compiles a step once per batch shape: a smaller last batch would compile
    every perturbation's step twice (each a compile of the whole step). The padding repeats the
    first examples with sample weight 0, so the weighted accuracy is exactly the
    accuracy on ``data``."""
    x, y = (np.asarray(keras.ops.convert_to_numpy(a)) for a in data)
    batch = min(_PAIR_BATCH, len(x))
    pad = -len(x) % batch
    weights = np.concatenate([np.ones(len(x), "float32"), np.zeros(pad, "float32")])
    if pad:
        x, y = np.concatenate([x, x[:pad]]), np.concatenate([y, y[:pad]])
    return x, y, weights, batch


def _label_shape(data):
    if is_pair(data):
        return tuple(data[1].shape)
    spec = getattr(data, "element_spec", None)  # tf.data
    if isinstance(spec, (tuple, list)) and len(spec) >= 2 and hasattr(spec[1], "shape"):
        return tuple(spec[1].shape)
    return None


def _one_hot(data):
    """Whether ``data``'s labels are one-hot rows (batch, classes > 1)."""
    shape = _label_shape(data)
    return shape is not None and len(shape) == 2 and (shape[1] or 0) > 1
