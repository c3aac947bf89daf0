"""What conversion, the summary and export share: which layers convert, their
kernels as matrices, pairing a model's layers with its clone's."""

import keras
import numpy as np
from keras import ops

from keras_lowrank._low_rank.model import dlrt_of
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankDense
from keras_lowrank.layers.dynamic_low_rank_conv import DynamicLowRankConv1D, DynamicLowRankConv2D
from keras_lowrank.layers.dynamic_low_rank_einsum import (
    DynamicLowRankEinsumDense,
    _einsum_plan,
    einsum_kernel_matrix,
)

#: the low-rank class standing for each Keras class ``to_low_rank`` converts (exactly that
#: class: a subclass of Dense may compute something else)
LOW_RANK_CLASSES = {kind.keras_class: kind for kind in (DynamicLowRankDense, DynamicLowRankConv1D,
                                                         DynamicLowRankConv2D, DynamicLowRankEinsumDense)}
#: the Keras classes that convert (conversion, the summary and export ask this)
KINDS = tuple(LOW_RANK_CLASSES)
CONVS = (keras.layers.Conv1D, keras.layers.Conv2D)


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("`model` is not built: its layers have no weights to factorise yet. Give it an "
                         "Input (keras.Input(shape)) or call it on a batch, and train it, first.")


def _kernel_matrix(layer):
    """A Dense/Conv/EinsumDense kernel as the n_in × n_out matrix its low-rank form
    factorises (numpy; an EinsumDense kernel with no such form: its last axis
    against the others)."""
    kernel = ops.convert_to_numpy(layer.kernel)
    if isinstance(layer, keras.layers.EinsumDense) and not _unconvertible(layer):
        return einsum_kernel_matrix(layer.equation, kernel)
    return kernel.reshape(-1, kernel.shape[-1])


def _unconvertible(layer):
    """Why a layer has no low-rank form here ("" if it has one)."""
    if getattr(layer, "lora_enabled", False):
        return "LoRA enabled (merge or drop the adapter first: its kernel is not one trained matrix)"
    if getattr(layer, "quantization_mode", None):
        return f"{layer.quantization_mode}-quantised weights (convert the float model, then quantise)"
    if isinstance(layer, keras.layers.EinsumDense):
        try:
            _einsum_plan(layer.equation)
        except ValueError:
            return f"equation {layer.equation!r} (its kernel is no single matrix)"
        return ""
    if not isinstance(layer, CONVS):
        return ""
    if layer.padding == "causal":
        return "padding='causal'"
    if layer.groups != 1:
        return f"groups={layer.groups}"
    if layer.data_format != "channels_last":
        return f"data_format={layer.data_format!r}"
    return ""


def _bias_size(layer):
    return int(np.prod(layer.bias.shape)) if getattr(layer, "bias", None) is not None else 0


def _unfinished_cycle(model):
    """(steps taken, steps_per_cycle) if the model's DLRT optimizer stopped
    inside a cycle, where the layers hold the augmented bases; else None."""
    optimizer = dlrt_of(getattr(model, "optimizer", None))
    if optimizer is None or not optimizer.built:
        return None
    step = int(ops.convert_to_numpy(optimizer.cycle_step))
    return (step, optimizer.steps_per_cycle) if step % optimizer.steps_per_cycle else None
