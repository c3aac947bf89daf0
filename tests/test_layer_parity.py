"""The low-rank layers behave as Keras' Dense/Conv2D where that means something:
regularizers, constraints, a narrowed InputSpec, config round trips; and
``to_low_rank`` carries what it can and says what it drops."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import LowRankWarning, compression
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


@pytest.mark.parametrize("make,shape", [
    (lambda **kw: DynamicLowRankDense(6, max_rank=3, **kw), (4, 5)),
    (lambda **kw: DynamicLowRankConv2D(6, 3, max_rank=3, padding="same", **kw), (4, 5, 5, 2)),
])
def test_regularizers_are_those_of_the_full_kernel(make, shape, rng):
    x = rng.normal(size=shape).astype("float32")
    layer = make(kernel_regularizer=keras.regularizers.L1L2(l1=0.01, l2=0.1),
                 bias_regularizer=keras.regularizers.L2(0.5), bias_initializer="ones")
    layer(x)
    kernel, bias = _np(layer.kernel), _np(layer.bias)
    expected = 0.01 * np.abs(kernel).sum() + 0.1 * (kernel ** 2).sum() + 0.5 * (bias ** 2).sum()
    assert sum(float(_np(loss)) for loss in layer.losses) == pytest.approx(expected, rel=1e-5)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert keras.regularizers.serialize(clone.kernel_regularizer) == config["kernel_regularizer"]


def test_bias_constraint_and_refused_kernel_constraint(rng):
    with pytest.raises(ValueError, match="kernel_constraint"):
        DynamicLowRankDense(4, kernel_constraint=keras.constraints.MaxNorm(1.0))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), DynamicLowRankDense(
        3, max_rank=2, bias_constraint=keras.constraints.NonNeg(), bias_initializer="ones")])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    # zero inputs: the output is the bias, and the loss pushes it from 1 towards -10
    model.fit(np.zeros((16, 5)), -10 * np.ones((16, 3)), batch_size=16, epochs=2, verbose=0)
    np.testing.assert_array_equal(_np(model.layers[0].bias), 0.0)  # held at 0 by NonNeg


def test_input_spec_names_the_expected_size(rng):
    layer = DynamicLowRankDense(4, max_rank=2)
    layer(rng.normal(size=(2, 5)).astype("float32"))
    with pytest.raises(ValueError, match="5"):
        layer(rng.normal(size=(2, 6)).astype("float32"))
    conv = DynamicLowRankConv2D(4, 3, max_rank=2)
    conv(rng.normal(size=(1, 6, 6, 2)).astype("float32"))
    with pytest.raises(ValueError):
        conv(rng.normal(size=(1, 6, 6, 3)).astype("float32"))
    assert tuple(conv.compute_output_shape((None, 6, 6, 2))) == (None, 4, 4, 4)


def test_config_rank_is_the_current_rank(rng):
    layer = DynamicLowRankDense(6, max_rank=4, rank=4)
    layer(rng.normal(size=(2, 5)).astype("float32"))
    u, s, v = layer.factors()
    layer.set_factors(u[:, :2], s[:2, :2], v[:, :2])
    assert layer.rank == 2 and layer.get_config()["rank"] == 2
    assert DynamicLowRankDense.from_config(layer.get_config()).initial_rank == 2


def test_to_low_rank_carries_regularizers_and_says_what_it_drops():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="a", kernel_regularizer=keras.regularizers.L2(0.1),
                           bias_constraint=keras.constraints.NonNeg(),
                           activity_regularizer=keras.regularizers.L1(0.01)),
        keras.layers.Dense(32, name="b", kernel_constraint=keras.constraints.MaxNorm(2.0)),
        keras.layers.Dense(3, name="out")])
    with pytest.warns(LowRankWarning, match=r"kernel_constraint of \['b'\]"):
        low = compression.to_low_rank(model, rank=4)
    a = low.get_layer("a")
    assert isinstance(a, DynamicLowRankDense)
    assert isinstance(a.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(a.bias_constraint, keras.constraints.NonNeg)
    assert isinstance(a.activity_regularizer, keras.regularizers.L1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        compression.to_low_rank(model, rank=4, layers=["a"])  # nothing dropped: no warning
