"""Robustness through Keras' own ``evaluate`` and ``fit``.

``PerturbedModel(model, perturbation)`` is a Keras model whose forward pass
perturbs its input before running ``model``: with an attack, every batch of
``evaluate`` is attacked inside the compiled test step (compiled metrics,
progress bar, callbacks, distribution strategies come from Keras), and ``fit``
is adversarial training (Madry et al. 2018: minimise the loss at the PGD point,
no gradient through the attack). The wrapped model's weights are shared, so
training the wrapper trains ``model``. It saves (``ModelCheckpoint``, ``.keras``)
with its model and attack, and resumes (``BackupAndRestore``); as with
Keras' own Dropout, the random starts' generator state is not saved.

Inputs outside the perturbation's declared range (``clip``) would be clipped
into it without a word (standardised images under the default [0, 1]), and
NaN inputs or labels outside [0, classes) give numbers on JAX (an opaque graph
error on TensorFlow): the compiled step counts such inputs and labels (invalid
labels are replaced by class 0 for that step, so no kernel fails) and
``fit``/``evaluate``/``predict`` raise a ValueError after the first batch (and
at the end), on TensorFlow and JAX. Integer inputs (uint8 images) are cast to
float32 and then checked against the range.

How the labels reach the attack: ``train_step``/``test_step`` hand the batch's
labels to ``call`` within the same trace, then run Keras' own step. In
``predict`` (no labels) the attack uses the model's own predictions.
"""

import contextlib
import inspect
import math

import keras
from keras import ops

from keras_lowrank._labels_in_call import LabelsInCall, label_counter
from keras_lowrank.analysis._batches import check_not_load_pair
from keras_lowrank.robustness._gradients import is_symbolic, without_autograd
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.perturbations import Perturbation, class_count


@keras.saving.register_keras_serializable(package="keras_lowrank")
class PerturbedModel(LabelsInCall, keras.Model):
    """Runs ``model`` on ``perturbation(model, x, y)`` instead of ``x``.

    Args:
        model: a Keras classifier (logits or probabilities).
        perturbation: a ``Perturbation``: an attack (``FGSM``, ``PGD``, ``SPSA``),
            ``GaussianNoise``, a ``Corruption``, or a subclass of your own
            (any object with ``perturb_in_graph(model, x, y)`` in ``keras.ops``).

    Examples:
        Keras' own ``evaluate`` scores ``model`` under the attack.

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([-0.5, 0.5])])
        >>> x = np.array([[0.55, 0.5], [0.9, 0.5]], "float32")  # class 0 iff x₀ > 0.5
        >>> y = np.array([0, 0])
        >>> from keras_lowrank.robustness import FGSM
        >>> attacked = PerturbedModel(model, FGSM(0.1))
        >>> attacked.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        >>> attacked.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
        0.5
    """

    no_input_gradient = ("it is a PerturbedModel, which perturbs its inputs itself and stops the "
                         "gradient through them: attack the model inside it (`.model`)")

    def __init__(self, model, perturbation, **kwargs):
        # float32 inputs also under a mixed-precision policy: the perturbation is
        # computed on the data as given (ε-balls, clipping) and ``model`` casts
        # them to its own compute dtype.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not hasattr(perturbation, "perturb_in_graph"):
            raise ValueError(
                "`perturbation` must be a keras_lowrank.robustness.Perturbation (an attack "
                "such as FGSM or PGD, GaussianNoise, a Corruption, or a subclass implementing "
                "perturb_in_graph(model, x, y)); got "
                f"{type(perturbation).__name__}."
            )
        refuse_token_inputs(model, caller="PerturbedModel")
        self.model = model
        self.perturbation = perturbation
        # Tracked so that random starts advance in JAX's stateless steps too
        # (and are saved with the weights).
        self.perturbation_seed = getattr(perturbation, "_seed", None)
        more = [value for value in vars(perturbation).values()
                if isinstance(value, keras.random.SeedGenerator) and value is not self.perturbation_seed]
        if more:  # only then: the weights of one-generator wrappers keep their layout
            self.perturbation_more_seeds = more
        # Sizes held as variables (``Perturbation._sizes``; a sweep assigns them
        # between calls of one compiled step): tracked, so that JAX's stateless
        # steps read their current values instead of tracing them as constants.
        self.perturbation_sizes = [value for value in vars(perturbation).values()
                                   if isinstance(value, keras.Variable)]
        self.clip = declared_range(perturbation)
        # Inputs outside `clip` seen since the last fit/evaluate/predict began
        # (a variable, so that both backends' compiled steps can count them).
        # Synchronised on read like a metric's: under tf.distribute each replica
        # counts its own batch without a cross-replica merge inside the step.
        self.inputs_out_of_range = keras.Variable(
            0.0, dtype="float32", trainable=False, aggregation="sum",
            synchronization="on_read", name="inputs_out_of_range")
        self.invalid_labels = label_counter()
        # Built as soon as the model is (BackupAndRestore, load_weights need it):
        # the wrapper's own state is built above.
        self.built = model.built

    @property
    def jit_compile(self):
        """Keras' ``jit_compile``, but False on TensorFlow where the perturbation calls NumPy
        on the host (``host_call``: the jpeg corruption), a call XLA cannot compile. A
        property, not a ``compile`` override: Keras does not re-compile a loaded model
        whose class overrides ``compile``."""
        if getattr(getattr(self, "perturbation", None), "host_call", False) and keras.backend.backend() == "tensorflow":
            return False
        return keras.Model.jit_compile.fget(self)

    @jit_compile.setter
    def jit_compile(self, value):
        keras.Model.jit_compile.fset(self, value)

    def build(self, input_shape):
        if not self.model.built:
            self.model.build(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "model": keras.saving.serialize_keras_object(self.model),
                "perturbation": keras.saving.serialize_keras_object(self.perturbation)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("model", "perturbation"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def _num_classes(self, input_shape):
        """The model's number of classes; a ValueError for any other output."""
        try:
            self.model.compute_output_shape(tuple(input_shape))
        except Exception:  # a model that cannot say: checked by the attack
            return None
        return class_count(self.model, input_shape)

    def _label_classes(self, x):
        return self._num_classes(x.shape)

    def _checked_batch(self, x, y):
        """Integer inputs as float32; labels that are not classes counted (the mixin)."""
        return super()._checked_batch(_as_float(x), y)

    def call(self, inputs, training=False):
        inputs = _as_float(inputs)
        if is_symbolic(inputs):  # Keras infers output shapes (torch: meta tensors, no values)
            return self.model(inputs, training=training)
        num_classes = self._num_classes(inputs.shape)
        if isinstance(self.perturbation, Perturbation):  # a range that may change between calls
            low, high = self.perturbation.input_range()
        else:
            low, high = self.clip if self.clip is not None else (-math.inf, math.inf)
        # NaN and ±∞ are outside whatever the range (±∞ bounds: no declared range)
        outside = ops.logical_not(ops.logical_and(ops.isfinite(inputs), ops.logical_and(
            inputs >= low - _RANGE_TOLERANCE, inputs <= high + _RANGE_TOLERANCE)))
        outside = ops.reshape(outside, (ops.shape(inputs)[0], -1))
        self.inputs_out_of_range.assign_add(
            ops.sum(ops.cast(ops.any(outside, axis=1), "float32")))
        self._count_invalid_labels()
        # the perturbation's gradient is stopped: on torch, no graph is recorded for it
        with _sizes_read(self.perturbation), without_autograd():
            # A perturbation that computes the model's outputs at its result on the
            # way (a report's shared step) hands them over in inference.
            if isinstance(self.perturbation, Perturbation):
                fused = None if training else num_classes
                perturbed, outputs = self.perturbation.perturb_and_predict(
                    self.model, inputs, self._labels, fused)
                if outputs is not None:
                    return ops.stop_gradient(outputs)
            else:
                perturbed = self.perturbation.perturb_in_graph(self.model, inputs, self._labels)
            perturbed = ops.stop_gradient(perturbed)
        return self.model(perturbed, training=training)

    def fit(self, *args, **kwargs):
        return self._with_input_checks(super().fit, args, kwargs)

    def evaluate(self, *args, **kwargs):
        return self._with_input_checks(super().evaluate, args, kwargs)

    def predict(self, *args, **kwargs):
        return self._with_input_checks(super().predict, args, kwargs)

    def _with_input_checks(self, method, args, kwargs):
        check_not_load_pair(inspect.signature(method).bind(*args, **kwargs).arguments.get("x"), "x")
        return super()._with_input_checks(method, args, kwargs)

    def _reset_input_counts(self):
        self.inputs_out_of_range.assign(0.0)
        super()._reset_input_counts()

    def _raise_for_counts(self):
        count = int(ops.convert_to_numpy(self.inputs_out_of_range))
        clip = declared_range(self.perturbation)  # now (a report's shared step changes it)
        if count and clip is None:
            raise ValueError(f"`x`: {count} input(s) hold NaN or infinite values; clean the data.")
        if count:
            raise ValueError(
                f"`x`: {count} input(s) hold NaN or lie outside the declared input range "
                f"clip={clip} of {self.perturbation!r}, which would clip them into it. "
                "Rescale the inputs to that range (uint8 images: divide by 255) or declare "
                "theirs with clip=(low, high) (None: no range).")
        super()._raise_for_counts()

    def _labels_for_call(self, y):
        if len(y.shape) == 2 and y.shape[-1] != 1:
            y = ops.argmax(y, axis=-1)  # one-hot
        return ops.reshape(y, (-1,))

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)


_RANGE_TOLERANCE = 1e-6


def _as_float(x):
    """Integer inputs (uint8 images) as float32; float inputs as they are."""
    if x is not None and "float" not in str(keras.backend.standardize_dtype(x.dtype)):
        return ops.cast(x, "float32")
    return x


@contextlib.contextmanager
def _sizes_read(perturbation):
    """The perturbation's variable sizes (``perturbation_sizes``) replaced by their
    values in this step (tensors, as the attacks' ops expect) for the duration."""
    held = {name: value for name, value in vars(perturbation).items() if isinstance(value, keras.Variable)}
    for name, variable in held.items():
        setattr(perturbation, name, ops.convert_to_tensor(variable))
    try:
        yield
    finally:
        for name, variable in held.items():
            setattr(perturbation, name, variable)


def declared_range(perturbation):
    """The (low, high) input range a perturbation clips to now, or None."""
    if isinstance(perturbation, Perturbation):
        low, high = (float(ops.convert_to_numpy(v)) for v in perturbation.input_range())
    else:  # any object with ``perturb_in_graph``
        clip = getattr(perturbation, "clip", None)
        low, high = (-math.inf, math.inf) if clip is None else (float(clip[0]), float(clip[1]))
    return None if (low, high) == (-math.inf, math.inf) else (low, high)
