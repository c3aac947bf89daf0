"""Handing a batch's labels to a wrapper model's ``call``.

Keras' ``train_step``/``test_step`` call the model on x only. Wrappers whose
forward pass needs y (an attack, the selectivity regularizer) set it here for
the duration of Keras' own step, which runs ``call`` within the same trace, so
compiled metrics, callbacks, distribution and both backends stay Keras'.
"""

import keras


class LabelsInCall:
    """Mixin for ``keras.Model`` subclasses: ``self._labels`` holds the batch's
    labels (after ``_labels_for_call``) while ``call`` runs in ``fit`` and
    ``evaluate``; it is None in ``predict`` and outside a step."""

    _labels = None

    def _labels_for_call(self, y):
        return y

    def _checked_batch(self, x, y):
        """(x, y) as Keras' own step will see them; a hook for validation."""
        return x, y

    def _with_labels(self, step, args):
        x, y, w = keras.utils.unpack_x_y_sample_weight(args[-1])
        x, y = self._checked_batch(x, y)
        args = (*args[:-1], keras.utils.pack_x_y_sample_weight(x, y, w))
        self._labels = None if y is None else self._labels_for_call(y)
        try:
            return step(*args)
        finally:
            self._labels = None

    def train_step(self, *args):
        return self._with_labels(super().train_step, args)

    def test_step(self, *args):
        return self._with_labels(super().test_step, args)
