"""Handing a batch's labels to a wrapper model's ``call``, and checking them.

Keras' ``train_step``/``test_step`` call the model on x only. Wrappers whose
forward pass needs y (an attack, the selectivity regularizer) set it here for
the duration of Keras' own step, which runs ``call`` within the same trace, so
compiled metrics, callbacks, distribution and both backends stay Keras'.

Labels that are not classes of the model (≥ classes, < 0, fractional, NaN)
give an opaque graph error on TensorFlow and numbers on JAX; a wrapper that
says its number of classes (``_label_classes``) has them counted in the
compiled step and replaced by class 0 for that step, so no kernel fails, and
``InputGuard`` raises a ValueError naming ``y`` after the first batch and at
the end. Written by hand: Keras has no input-value validation.
"""

import inspect

import keras
from keras import ops


def label_counter():
    """The variable counting a wrapper's invalid labels (``invalid_labels``):
    synchronised on read like a metric's, so that under tf.distribute each replica
    counts its own batch without a cross-replica merge inside the step."""
    return keras.Variable(0.0, dtype="float32", trainable=False, aggregation="sum",
                          synchronization="on_read", name="invalid_labels")


class LabelsInCall:
    """Mixin for ``keras.Model`` subclasses: ``self._labels`` holds the batch's
    labels (after ``_labels_for_call``) while ``call`` runs in ``fit`` and
    ``evaluate``; it is None in ``predict`` and outside a step. A subclass that
    checks labels creates ``self.invalid_labels = label_counter()``, returns its
    class count from ``_label_classes`` and calls ``_count_invalid_labels()`` in
    ``call`` (JAX assigns a step's state only there)."""

    _labels = None
    _invalid_in_batch = None  # a traced value of one step only

    def _labels_for_call(self, y):
        return y

    def _label_classes(self, x):
        """The number of classes the labels must index, or None (not checked)."""
        return None

    def _checked_batch(self, x, y):
        """(x, y) as Keras' own step will see them: labels that are not classes
        (integers in [0, classes), or one-hot rows that are distributions) counted
        and replaced by class 0 for this step."""
        num_classes = None if y is None else self._label_classes(x)
        if num_classes is None:
            return x, y
        values = ops.cast(y, "float32")
        if len(y.shape) == 2 and y.shape[-1] == num_classes:  # one-hot / soft labels
            valid = ops.logical_and(
                ops.all(ops.logical_and(values >= 0, values <= 1), axis=-1),
                ops.abs(ops.sum(values, axis=-1) - 1) < 1e-3)
            safe = ops.where(valid[:, None], y, ops.cast(ops.one_hot(
                ops.zeros_like(valid, "int32"), num_classes), y.dtype))
        else:
            valid = ops.logical_and(
                ops.logical_and(values >= 0, values < num_classes),
                ops.equal(values, ops.floor(values)))
            safe = ops.where(valid, y, ops.zeros_like(y))
        self._invalid_in_batch = ops.sum(1.0 - ops.cast(ops.reshape(valid, (-1,)), "float32"))
        return x, safe

    def _count_invalid_labels(self):
        if self._invalid_in_batch is not None:
            self.invalid_labels.assign_add(self._invalid_in_batch)

    def _with_labels(self, step, args):
        x, y, w = keras.utils.unpack_x_y_sample_weight(args[-1])
        x, y = self._checked_batch(x, y)
        args = (*args[:-1], keras.utils.pack_x_y_sample_weight(x, y, w))
        self._labels = None if y is None else self._labels_for_call(y)
        try:
            return step(*args)
        finally:
            self._labels = None
            self._invalid_in_batch = None

    def train_step(self, *args):
        return self._with_labels(super().train_step, args)

    def test_step(self, *args):
        return self._with_labels(super().test_step, args)

    # -- host side ---------------------------------------------------------------
    def _raise_if_invalid_inputs(self):
        """The counts of the steps since the last reset, as a ValueError."""
        getattr(self, "jax_state_sync", lambda: None)()  # JAX keeps the state aside in loops
        self._raise_for_counts()

    def _raise_for_counts(self):
        labels = int(ops.convert_to_numpy(self.invalid_labels))
        if labels:
            raise ValueError(
                f"`y`: {labels} label(s) are not integer classes in [0, number of classes) "
                "of the model's output (or one-hot rows of that length); fix the labels or "
                "the model's number of outputs.")

    def _reset_input_counts(self):
        self.invalid_labels.assign(0.0)

    def _with_input_checks(self, method, args, kwargs):
        """``method`` (fit, evaluate, predict) with an ``InputGuard`` among its callbacks."""
        bound = inspect.signature(method).bind(*args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        if isinstance(callbacks, keras.callbacks.CallbackList):
            # fit's validation passes its own list, which holds fit's guard already
            # (Keras 3's CallbackList has no `append`)
            if not any(isinstance(c, InputGuard) for c in callbacks.callbacks):
                guard = InputGuard()
                guard.set_model(self)
                callbacks.callbacks.append(guard)
        else:
            bound.arguments["callbacks"] = list(callbacks or []) + [InputGuard()]
        return method(*bound.args, **bound.kwargs)


class InputGuard(keras.callbacks.Callback):
    """Raises the model's ``_raise_if_invalid_inputs`` after the first batch and at
    the end, so bad data costs one batch, not a run. In ``fit`` the epoch's
    training batches are checked before its validation resets the counts."""

    _training = False

    def _reset(self, logs=None):
        self.model._reset_input_counts()

    def _check_first(self, batch, logs=None):
        if batch == 0:
            self.model._raise_if_invalid_inputs()

    def _check(self, *args, **kwargs):
        self.model._raise_if_invalid_inputs()

    def on_train_begin(self, logs=None):
        self._training = True
        self._reset()

    def on_train_end(self, logs=None):
        self._training = False

    def on_test_begin(self, logs=None):
        if self._training:  # fit's validation: the epoch's training batches first
            self._check()
        self._reset()

    on_predict_begin = _reset
    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _check_first
    on_epoch_end = on_test_end = on_predict_end = _check
