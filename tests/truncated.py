"""The independent truth of a conversion: a model with some kernels replaced by their
best rank-r approximations, computed with numpy."""

import keras
import numpy as np

from keras_lowrank._keras_compat import layer_paths
from keras_lowrank.compression._common import _kernel_matrix
from keras_lowrank.layers.dynamic_low_rank_einsum import _einsum_plan


def truncated_copy(model, paths, rank):
    """A copy of ``model`` (its config and weights) with each kernel at ``paths``
    replaced by its best rank-``rank`` approximation as a matrix (numpy float64 SVD of its
    n_in × n_out form; an EinsumDense kernel's axes put back in their order)."""
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    copy.set_weights(model.get_weights())
    layers = dict(layer_paths(copy))
    for path in paths:
        layer = layers[path]
        u, d, vt = np.linalg.svd(_kernel_matrix(layer).astype("float64"), full_matrices=False)
        best = (u[:, :rank] * d[:rank]) @ vt[:rank]
        if isinstance(layer, keras.layers.EinsumDense):
            plan = _einsum_plan(layer.equation)
            best = best.reshape([layer.kernel.shape[i] for i in plan["order"]]).transpose(plan["inverse"])
        layer.kernel.assign(best.reshape(layer.kernel.shape).astype("float32"))
    return copy
