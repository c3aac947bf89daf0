"""Regularizers that need more than a layer's weights.

``SelectivityRegularizedModel`` — the class-selectivity regularizer of Leavitt &
Morcos (2020, keras_lowrank/methods.md §4):

    loss = task loss − α · mean_layers( mean_units SI ),

SI computed per minibatch with the batch's labels. **Sign convention (the
paper's): α < 0 penalises selectivity (lowers it), α > 0 rewards it (raises
it), α = 0 is plain training.**

Why a model wrapper: the term needs the labels, which a layer regularizer never
sees. The wrapper hands the batch's labels to ``call`` within the same trace of
Keras' own ``train_step``/``test_step`` (as ``PerturbedModel`` does), and
``call`` adds the term with ``add_loss`` — so Keras' loss tracking, compiled
metrics, callbacks and both backends work unchanged. ``predict`` (no labels)
adds nothing. The wrapped model's weights are shared: training the wrapper
trains ``model``.
"""

import keras
from keras import ops

from keras_lowrank._labels_in_call import LabelsInCall, label_counter
from keras_lowrank._validation import check_number
from keras_lowrank.analysis.selectivity import (
    _selectivity_index,
    num_classes_of,
    selectivity_layers,
    selectivity_offsets,
)

__all__ = ["SelectivityRegularizedModel"]


@keras.saving.register_keras_serializable(package="keras_lowrank")
class SelectivityRegularizedModel(LabelsInCall, keras.Model):
    """Trains ``model`` with the class-selectivity regularizer.

    Args:
        model: a Keras classifier built on a known input (functional, or
            Sequential starting with ``keras.Input``).
        alpha: regularizer weight α (α < 0 lowers selectivity, α > 0 raises it).
        layers: names of the layers to regularize; default: every ReLU layer of
            ``model`` except its output layer — or, in a model without ReLU, every
            layer whose activation is bounded below (GELU, swish, …), shifted by
            its floor as in ``analysis.class_selectivity``.
        num_classes: default: the width of ``model``'s output.

    Examples:
        α < 0 trains ``model`` towards less class-selective units.

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
        ...                           keras.layers.Dense(3)])
        >>> reg = SelectivityRegularizedModel(model, alpha=-1.0)
        >>> reg.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> x = np.random.default_rng(0).uniform(size=(30, 4)).astype("float32")
        >>> history = reg.fit(x, np.arange(30) % 3, epochs=1, verbose=0)  # trains ``model``
        >>> bool(np.isfinite(history.history["loss"][0]))
        True

    References:
        - Leavitt & Morcos, "Selectivity considered harmful: evaluating the causal impact of class
          selectivity in DNNs", ICLR 2021: https://arxiv.org/abs/2003.01262
    """

    def __init__(self, model, alpha, layers=None, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        alpha = check_number(alpha, "alpha (α < 0 lowers selectivity, α > 0 raises it)")
        try:
            outputs = model.outputs
        except (AttributeError, ValueError):  # a Sequential model without an Input
            outputs = None
        if len(outputs or ()) != 1:
            raise ValueError("`model` must be a built classifier with one output (a functional "
                             "model, or a Sequential model starting with keras.Input).")
        self.model = model
        self.alpha = float(alpha)
        self.num_classes = num_classes_of(model, num_classes)
        chosen = selectivity_layers(model, layers)
        self.layer_names = [layer.name for layer in chosen]
        self._offsets = selectivity_offsets(chosen)  # GELU & co.: "off" shifted to 0, as class_selectivity
        # One functional graph from the inputs to the output and the chosen
        # layers' outputs: a single forward pass gives both (shared weights).
        self._features = keras.Model(model.inputs,
                                     [model.outputs[0]] + [layer.output for layer in chosen])
        # Labels that are not classes, counted in the step (``LabelsInCall``): an
        # opaque graph error on TensorFlow, numbers on JAX, 0.5 truncated to 0 otherwise.
        self.invalid_labels = label_counter()
        self.built = True  # built with its model (BackupAndRestore needs a built model)

    def _label_classes(self, x):
        return self.num_classes

    def fit(self, *args, **kwargs):
        return self._with_input_checks(super().fit, args, kwargs)

    def evaluate(self, *args, **kwargs):
        return self._with_input_checks(super().evaluate, args, kwargs)

    def call(self, inputs, training=False):
        outputs, *activations = self._features(inputs, training=training)
        self._count_invalid_labels()
        if self._labels is not None and self.alpha != 0.0:
            # float32 also under mixed precision, like Keras' own losses.
            means = [ops.mean(_selectivity_index(ops.cast(a, "float32") + offset, self._labels,
                                                      self.num_classes))
                     for a, offset in zip(activations, self._offsets)]
            self.add_loss(-self.alpha * ops.mean(ops.stack(means)))
        return outputs

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "alpha": self.alpha, "layers": self.layer_names,
                "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)
