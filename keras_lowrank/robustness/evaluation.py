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

How the labels reach the attack: ``train_step``/``test_step`` hand the batch's
labels to ``call`` within the same trace, then run Keras' own step. In
``predict`` (no labels) the attack uses the model's own predictions.
"""

import keras
from keras import ops

from keras_lowrank._labels_in_call import LabelsInCall


@keras.saving.register_keras_serializable(package="keras_lowrank")
class PerturbedModel(LabelsInCall, keras.Model):
    """Runs ``model`` on ``perturbation(model, x, y)`` instead of ``x``.

    Args:
        model: a Keras classifier (logits or probabilities).
        perturbation: an attack (``FGSM``, ``PGD``) or any object with
            ``perturb_in_graph(model, x, y)`` written in ``keras.ops``.
    """

    def __init__(self, model, perturbation, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(perturbation, "perturb_in_graph"):
            raise ValueError(
                "`perturbation` must be an attack such as FGSM or PGD, or an "
                "object with perturb_in_graph(model, x, y); got "
                f"{type(perturbation).__name__}."
            )
        self.model = model
        self.perturbation = perturbation
        # Tracked so that random starts advance in JAX's stateless steps too
        # (and are saved with the weights).
        self.perturbation_seed = getattr(perturbation, "_seed", None)
        # Built as soon as the model is (BackupAndRestore, load_weights need it):
        # the wrapper has no weights of its own.
        self.built = model.built

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

    def call(self, inputs, training=False):
        perturbed = ops.stop_gradient(
            self.perturbation.perturb_in_graph(self.model, inputs, self._labels)
        )
        return self.model(perturbed, training=training)

    def _labels_for_call(self, y):
        if len(y.shape) == 2 and y.shape[-1] != 1:
            y = ops.argmax(y, axis=-1)  # one-hot
        return ops.reshape(y, (-1,))

    def compute_output_shape(self, input_shape):
        return self.model.compute_output_shape(input_shape)
