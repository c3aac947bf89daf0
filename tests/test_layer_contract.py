"""The layers under Keras' layer contract (``tests/layer_contract.py``, a copy of
Keras' ``run_layer_test``), with outputs checked against numpy."""

import numpy as np
import pytest
from layer_contract import run_layer_test

from keras_lowrank import (
    DynamicLowRankConv1D,
    DynamicLowRankConv2D,
    DynamicLowRankDense,
    DynamicLowRankEinsumDense,
    LowRankProjection,
)

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_dynamic_low_rank_dense():
    # An all-ones kernel has rank 1, so every rank ≥ 1 represents it exactly: y = x·1 + 0.
    x = _x((4, 6))
    run_layer_test(
        DynamicLowRankDense,
        {"units": 5, "max_rank": 3, "rank": 2, "kernel_initializer": "ones", "bias_initializer": "zeros"},
        input_data=x, expected_output=np.repeat(x.sum(axis=1, keepdims=True), 5, axis=1),
        expected_num_trainable_weights=4,  # U, S, V, bias
        expected_num_losses=0, atol=1e-5, rtol=1e-5)


def test_dynamic_low_rank_dense_spectral_loss_and_activation():
    run_layer_test(
        DynamicLowRankDense, {"units": 3, "max_rank": 2, "activation": "relu", "spectral_weight": 0.1},
        input_shape=(2, 4), expected_output_shape=(2, 3), expected_output_dtype="float32",
        expected_num_losses=1)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_dynamic_low_rank_conv2d(padding):
    x = _x((2, 5, 5, 2))
    # All-ones 2×2 kernel: each output channel sums the window over both channels.
    padded = x if padding == "valid" else np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    size = padded.shape[1] - 1
    window = sum(padded[:, i:i + size, j:j + size, :] for i in range(2) for j in range(2)).sum(-1)
    run_layer_test(
        DynamicLowRankConv2D,
        {"filters": 3, "kernel_size": 2, "padding": padding, "max_rank": 2, "kernel_initializer": "ones"},
        input_data=x, expected_output=np.repeat(window[..., None], 3, axis=-1),
        expected_num_trainable_weights=4, expected_num_losses=0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flatten", [True, False])
def test_low_rank_projection_is_the_identity_by_default(flatten):
    x = _x((4, 3, 5))
    run_layer_test(LowRankProjection, {"rank": 2, "flatten": flatten}, input_data=x, expected_output=x)


def test_low_rank_projection_projection_mode():
    run_layer_test(LowRankProjection, {"rank": 2, "output_mode": "projection"}, input_shape=(4, 6),
                   expected_output_shape=(4, 6), expected_output_dtype="float32")


def test_dynamic_low_rank_conv1d():
    x = _x((2, 7, 2))
    # All-ones kernel of width 2: each output channel sums the window over both channels.
    window = (x[:, :-1] + x[:, 1:]).sum(-1)
    run_layer_test(
        DynamicLowRankConv1D,
        {"filters": 3, "kernel_size": 2, "max_rank": 2, "kernel_initializer": "ones"},
        input_data=x, expected_output=np.repeat(window[..., None], 3, axis=-1),
        expected_num_trainable_weights=4, expected_num_losses=0, atol=1e-5, rtol=1e-5)


def test_dynamic_low_rank_einsum_dense():
    x = _x((2, 3, 4))
    # All-ones (4) × (2, 5) kernel of "abc,cde->abde": every output sums its token's features.
    run_layer_test(
        DynamicLowRankEinsumDense,
        {"equation": "abc,cde->abde", "output_shape": (None, 2, 5), "bias_axes": "de", "max_rank": 2,
         "kernel_initializer": "ones"},
        input_data=x, expected_output=np.broadcast_to(x.sum(-1)[..., None, None], (2, 3, 2, 5)),
        expected_num_trainable_weights=4, expected_num_losses=0, atol=1e-5, rtol=1e-5)
