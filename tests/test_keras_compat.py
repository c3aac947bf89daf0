"""Each private Keras API keras_lowrank relies on (all in ``_keras_compat``),
checked against the installed Keras: a release that changes one fails here."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import _keras_compat as compat
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.optimizers import DLRT


@pytest.mark.parametrize("config", [
    dict(filters=5, kernel_size=(3, 3), strides=(1, 1), padding="valid", dilation_rate=(1, 1)),
    dict(filters=4, kernel_size=(3, 2), strides=(2, 1), padding="same", dilation_rate=(1, 1)),
    dict(filters=3, kernel_size=(2, 2), strides=(1, 1), padding="valid", dilation_rate=(2, 2)),
])
def test_conv_output_shape_is_the_conv_layers(config):
    shape = (None, 9, 8, 2)
    expected = keras.layers.Conv2D(**config).compute_output_shape(shape)
    assert tuple(compat.compute_conv_output_shape(shape, data_format="channels_last", **config)) == \
        tuple(expected)



@pytest.mark.parametrize("equation,output_shape,bias_axes,shape", [
    ("abc,cde->abde", (None, 4, 8), "de", (2, 5, 16)),
    ("...b,bc->...c", (12,), "c", (2, 3, 7, 10)),
    ("ab...,bc->ac...", (5,), "c", (2, 6, 3)),
    ("abc,dce->abde", (None, 3, 5), None, (2, 4, 6)),
])
def test_einsum_dense_shapes_are_the_einsum_dense_layers(equation, output_shape, bias_axes, shape):
    layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)
    output = layer(np.zeros(shape, "float32"))
    kernel, bias, full = compat.einsum_dense_shapes(equation, bias_axes, shape, output_shape)
    assert kernel == tuple(layer.kernel.shape) and full == tuple(output.shape)
    assert bias == (None if bias_axes is None else tuple(layer.bias.shape))

class Holder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = DynamicLowRankDense(4, max_rank=2, name="held")

    def call(self, x):
        return self.inner(x)


def test_sublayers_and_graph_models():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6, name="nested_dense")],
                             name="inner")
    inputs = keras.Input((6,))
    outputs = Holder(name="holder")(inner(inputs))
    functional = keras.Model(inputs, outputs)
    names = {layer.name for layer in compat.all_sublayers(functional)}
    assert {"inner", "nested_dense", "holder", "held"} <= names
    paths = [path for path, _ in compat.layer_paths(functional)]
    assert {"inner", "inner/nested_dense", "holder", "holder/held"} <= set(paths)
    layer = functional.get_layer("holder")
    assert tuple(compat.build_input_shape(layer)) == (None, 6)
    assert compat.build_input_shape(keras.layers.Dense(3)) is None


def test_slot_names_and_untracked_inner_optimizer():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    kernel = model.layers[0].kernel
    slots = [v.name for v in optimizer.variables if v.name.startswith(compat.slot_name_prefix(kernel))]
    assert sorted(s[len(compat.slot_name_prefix(kernel)):] for s in slots) == ["momentum", "velocity"]
    low = keras.Sequential([keras.Input((3,)), DynamicLowRankDense(2, max_rank=2)])
    dlrt = DLRT(keras.optimizers.Adam())
    dlrt.build(low.trainable_variables)
    ids = [id(v) for v in dlrt.variables]
    assert len(ids) == len(set(ids))  # the inner optimizer's variables are not tracked twice


def test_optimizer_variable_accessors_match_the_public_lists():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    assert [id(v) for v in compat.built_trainable_variables(optimizer)] == [id(v) for v in model.trainable_variables]
    own = compat.own_optimizer_variables(optimizer)
    assert {id(v) for v in own} == {id(v) for v in optimizer.variables}  # a plain optimizer owns all of them
    low = keras.Sequential([keras.Input((3,)), DynamicLowRankDense(2, max_rank=2)])
    dlrt = DLRT(keras.optimizers.Adam())
    dlrt.build(low.trainable_variables)
    assert [id(v) for v in compat.built_trainable_variables(dlrt)] == [id(v) for v in low.trainable_variables]
    inner = {id(v) for v in dlrt.inner_optimizer.variables}
    assert own and not inner & {id(v) for v in compat.own_optimizer_variables(dlrt)}


def test_replaced_attribute_restores_and_is_not_tracked():
    layer = keras.layers.Dense(2, activation="relu")
    layer.build((None, 3))
    weights = len(layer.weights)
    with compat.replaced_attribute(layer, "activation", keras.activations.linear):
        assert layer.activation is keras.activations.linear
        x = np.ones((1, 3), "float32")
        linear = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), np.maximum(linear, 0))
    assert layer.activation is keras.activations.relu and len(layer.weights) == weights
    softmax = keras.layers.Softmax()
    with compat.replaced_attribute(softmax, "call", lambda inputs, mask=None: inputs):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(softmax(np.ones((1, 3), "float32"))),
                                      np.ones((1, 3)))
    assert "call" not in vars(softmax)


def test_replace_layer_reaches_attributes_lists_and_the_functional_graph(tmp_path):
    """A layer swapped inside a custom layer and one in the functional graph: the model
    computes with the new ones, counts their weights only, and its config and weights
    save and load (the graph's node keys follow the new layer)."""
    inputs = keras.Input((6,))
    top = keras.layers.Dense(6, name="top")
    outputs = Holder(name="holder")(top(inputs))
    model = keras.Model(inputs, outputs)
    x = np.ones((2, 6), "float32")
    new_top = keras.layers.Dense(6, name="top", kernel_initializer="ones")
    new_top.build((None, 6))
    compat.replace_layer(model, top, new_top)
    holder = model.get_layer("holder")
    new_held = keras.layers.Dense(4, name="held", kernel_initializer="ones", bias_initializer="ones")
    new_held.build((None, 6))
    compat.replace_layer(model, holder.inner, new_held)
    assert holder.inner is new_held and model.get_layer("top") is new_top
    np.testing.assert_allclose(ops.convert_to_numpy(model(x)), np.full((2, 4), 6 * 6 + 1.0))
    assert model.count_params() == 6 * 6 + 6 + 6 * 4 + 4
    model.save_weights(tmp_path / "w.weights.h5")
    assert keras.Model.from_config(model.get_config(), custom_objects={"Holder": Holder}) is not None
    compat.set_untracked(holder, "note", [new_held])
    assert model.count_params() == 6 * 6 + 6 + 6 * 4 + 4  # not tracked twice


def test_seed_states_are_the_variables_that_are_not_weights_and_the_global_generator():
    """Keras lists its seed generators' states among ``model.variables`` but not among
    ``model.weights``: the difference is exactly ``seed_states`` (nested layers and a
    nested model included); Keras' global generator joins once ``seed=None`` made it."""

    class Noise(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.generator = keras.random.SeedGenerator(3)

        def call(self, x):
            return x + keras.random.normal(ops.shape(x), seed=self.generator)

    inner = keras.Sequential([keras.Input((4,)), Noise(), keras.layers.Dense(4)])
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5, seed=1), inner, keras.layers.Dense(2)])
    expected = {id(v) for v in model.variables} - {id(w) for w in model.weights}
    states = compat.seed_states(model)
    assert len(expected) == 2 and {id(s) for s in states} >= expected
    from keras.src.backend.common import global_state

    shared = global_state.get_global_attribute("global_seed_generator")
    assert len(states) == len(expected) + (shared is not None)
    keras.random.normal((1,))  # makes the global generator if none was
    shared = global_state.get_global_attribute("global_seed_generator")
    assert id(shared.state) in {id(s) for s in compat.seed_states(model)}
