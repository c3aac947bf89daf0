"""Keras' layer contract, ``run_layer_test``, for layers outside Keras.

A trimmed copy of ``keras/src/testing/test_case.py::TestCase.run_layer_test``
(Keras 3.15, Apache 2.0), as KerasHub keeps one: Keras' own is private API. Written
with public API only (``keras.tree``, ``keras.saving``) and pytest asserts; the
sparse, ragged, dict-input, masking and torch/TPU branches are dropped (our layers
take one dense tensor). The checks, in Keras' order:

1. config round trip: ``from_config(get_config())`` and
   ``deserialize(serialize())`` give the same config and the same attributes;
2. ``build(input_shape)`` builds it with the expected numbers of weights;
3. a symbolic call (``keras.KerasTensor``) gives the expected shape and dtype;
4. an eager call gives the expected output (and losses);
5. one compiled training step (``fit``, ``jit_compile="auto"``) runs;
6. under the ``mixed_float16`` policy the output has the dtype
   ``compute_output_spec`` announces and every float weight stays float32.
"""

import json

import keras
import numpy as np


def _to_json(value):
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def run_class_serialization_test(instance, custom_objects=None):
    cls = type(instance)
    config = instance.get_config()
    reference = set(dir(instance))
    with keras.saving.custom_object_scope(custom_objects or {}):
        revived = cls.from_config(config)
    assert _to_json(revived.get_config()) == _to_json(config)
    assert set(dir(revived)) == reference
    serialized = json.loads(_to_json(keras.saving.serialize_keras_object(instance)))
    with keras.saving.custom_object_scope(custom_objects or {}):
        revived = keras.saving.deserialize_keras_object(serialized)
    assert _to_json(revived.get_config()) == _to_json(config)
    assert set(dir(revived)) - {"__annotations__"} == reference - {"__annotations__"}
    return revived


def run_layer_test(layer_cls, init_kwargs, input_shape=None, input_data=None, call_kwargs=None,
                   expected_output_shape=None, expected_output_dtype=None, expected_output=None,
                   expected_num_trainable_weights=None, expected_num_non_trainable_weights=None,
                   expected_num_losses=None, custom_objects=None, run_training_check=True,
                   run_mixed_precision_check=True, atol=1e-6, rtol=1e-6):
    """Runs Keras' basic checks on ``layer_cls(**init_kwargs)`` (see the module doc).

    Give ``input_shape`` (random float32 inputs are drawn) or ``input_data``;
    ``expected_output`` needs ``input_data``."""
    assert (input_shape is None) != (input_data is None), "give input_shape or input_data"
    assert expected_output is None or input_data is not None
    call_kwargs = call_kwargs or {}
    if input_data is None:
        input_data = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    build_shape = tuple(input_data.shape)

    run_class_serialization_test(layer_cls(**init_kwargs), custom_objects)

    def check_built(layer):
        assert layer.built
        if expected_num_trainable_weights is not None:
            assert len(layer.trainable_weights) == expected_num_trainable_weights, layer.trainable_weights
        if expected_num_non_trainable_weights is not None:
            assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, \
                layer.non_trainable_weights

    def check_output(layer, output, eager):
        if expected_output_shape is not None:
            assert len(output.shape) == len(expected_output_shape), output.shape
            assert all(e is None or e == d for e, d in zip(expected_output_shape, output.shape)), output.shape
        if expected_output_dtype is not None:
            assert keras.backend.standardize_dtype(output.dtype) == expected_output_dtype
        if eager and expected_output is not None:
            np.testing.assert_allclose(keras.ops.convert_to_numpy(output), expected_output, atol=atol, rtol=rtol)
        if eager and expected_num_losses is not None:
            assert len(layer.losses) == expected_num_losses, layer.losses

    # Build.
    layer = layer_cls(**init_kwargs)
    layer.build(build_shape)
    check_built(layer)

    # Symbolic call.
    symbolic_input = keras.KerasTensor(build_shape, dtype=keras.backend.standardize_dtype(input_data.dtype))
    layer = layer_cls(**init_kwargs)
    symbolic_output = layer(symbolic_input, **call_kwargs)
    check_built(layer)
    check_output(layer, symbolic_output, eager=False)

    # Eager call and one compiled training step.
    layer = layer_cls(**init_kwargs)
    output = layer(input_data, **call_kwargs)
    check_output(layer, output, eager=True)

    if run_training_check:
        class TestModel(keras.Model):
            def __init__(self, layer):
                super().__init__()
                self.layer = layer

            def call(self, x, training=False):
                return self.layer(x, training=training)

        class SumLoss(keras.losses.Loss):
            def __call__(self, y_true, y_pred, sample_weight=None):
                return keras.ops.sum(y_pred)

        def batches():
            while True:
                yield input_data, output

        model = TestModel(layer)
        model.compile(optimizer="sgd", loss=SumLoss(), jit_compile="auto")
        model.fit(batches(), steps_per_epoch=1, verbose=0)

    if run_mixed_precision_check:
        layer = layer_cls(**{**init_kwargs, "dtype": "mixed_float16"})
        output = layer(input_data, **call_kwargs)
        spec = layer.compute_output_spec(keras.KerasTensor(build_shape, dtype=layer.compute_dtype))
        assert keras.backend.standardize_dtype(output.dtype) == spec.dtype, (output.dtype, spec.dtype)
        for weight in layer.weights:
            if "float" in keras.backend.standardize_dtype(weight.dtype):
                assert keras.backend.standardize_dtype(weight.dtype) == "float32", weight
