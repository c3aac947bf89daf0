"""Exported models as Keras models the attacks take: a SavedModel white-box
(gradients through its concrete function), a TFLite file black-box (its
interpreter inside the graph, no gradient). TensorFlow backend only."""

import os
import threading
import warnings

import keras
import numpy as np


def _require_tensorflow_backend(what):
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"{what} runs on the TensorFlow backend (KERAS_BACKEND=tensorflow); "
            f"the backend is {keras.backend.backend()!r}.")
    import tensorflow as tf

    return tf


def _saved_model(path):
    tf = _require_tensorflow_backend("Attacking a SavedModel")
    loaded = tf.saved_model.load(path)
    endpoint = "serve" if hasattr(loaded, "serve") else None
    if endpoint is None:
        raise ValueError(f"{path!r} has no `serve` endpoint: export it with `Model.export` or "
                         "`compression.export_compressed`.")
    specs = loaded.serve.concrete_functions[0].structured_input_signature[0]
    if len(specs) != 1:
        raise ValueError(f"{path!r} takes {len(specs)} inputs; attacks need a single-input classifier.")
    shape = tuple(specs[0].shape[1:])
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve", name="saved_model")
    return keras.Sequential([keras.Input(shape), layer], name="saved_model")


@keras.saving.register_keras_serializable(package="keras_lowrank")
class _TFLiteLayer(keras.layers.Layer):
    """Runs a .tflite file's interpreter on each batch (``tf.numpy_function``)."""

    no_input_gradient = ("it runs a TFLite interpreter, which has no gradients (a white-box attack "
                         "would see zeros and report about the clean accuracy)")

    def __init__(self, path, num_classes, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.file, self.num_classes = path, num_classes
        self._runner = _Runner(path)

    def _run(self, x):
        return self._runner(x)

    def call(self, x):
        import tensorflow as tf

        out = tf.numpy_function(self._run, [tf.cast(x, tf.float32)], tf.float32, stateful=False)
        return tf.reshape(out, (-1, self.num_classes))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "path": self.file, "num_classes": self.num_classes}


class _Runner:
    """One interpreter, called under a lock: TF may run two of the graph's
    interpreter calls at once, and an interpreter is not thread-safe."""

    def __init__(self, path):
        self.path, self.interpreter, self.lock = path, None, threading.Lock()

    def __call__(self, x):
        with self.lock:
            if self.interpreter is None:
                self.interpreter = _interpreter(self.path)
            interpreter = self.interpreter
            index = interpreter.get_input_details()[0]["index"]
            if tuple(interpreter.get_input_details()[0]["shape"]) != x.shape:
                interpreter.resize_tensor_input(index, x.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(index, np.ascontiguousarray(x, dtype=np.float32))
            interpreter.invoke()
            return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.float32)


def _interpreter(path):
    try:  # TensorFlow ≥ 2.20 points to LiteRT; use it where installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    return interpreter


def _tflite(path):
    _require_tensorflow_backend("Attacking a TFLite file")
    with open(path, "rb") as handle:  # a FlatBuffer names its schema at bytes 4..8
        if handle.read(8)[4:8] != b"TFL3":
            raise ValueError(f"{path!r} is not a TFLite model (no TFL3 header: damaged, cut short, or "
                             "another format); export it again (export_compressed(..., formats='tflite')).")
    interpreter = _interpreter(path)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "attacks need a single-input, single-output classifier.")
    shape = tuple(int(d) for d in inputs[0]["shape"][1:])
    num_classes = int(outputs[0]["shape"][-1])
    return keras.Sequential([keras.Input(shape), _TFLiteLayer(path, num_classes, name="tflite")], name="tflite")


def load_exported(path):
    """An exported classifier as a Keras model the attacks and ``evaluate_robustness``
    take, so the files users ship are evaluated, not only the model they came from.

    A SavedModel folder (``Model.export``, ``export_compressed``) becomes a model
    around its ``serve`` function (``keras.layers.TFSMLayer``): white-box attacks
    differentiate through the exported graph. A ``.tflite`` file becomes a model
    that runs the TFLite interpreter on each batch: it has no gradient (white-box
    attacks see zero gradients, which AutoAttack flags), so attack it black-box
    (``Square``, ``SPSA``). Both need the TensorFlow backend.

    Args:
        path: a SavedModel folder or a ``.tflite`` file.

    Returns:
        a ``keras.Model`` (inference only) whose outputs are the exported model's.

    Examples:
        >>> load_exported("missing.tflite")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No exported model at 'missing.tflite'.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No exported model at {path!r}.")
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path!r} is a folder without saved_model.pb: not a SavedModel.")
        return _saved_model(path)
    if path.endswith(".tflite"):
        return _tflite(path)
    raise ValueError(f"{path!r}: expected a SavedModel folder or a .tflite file "
                     "(a .keras file loads with keras.saving.load_model).")
