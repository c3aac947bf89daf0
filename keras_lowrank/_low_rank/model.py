"""What several modules ask of a model's dynamic low-rank layers: finding them,
their condition numbers, the DLRT optimizer that trains them, and truncating
them between steps with the optimizer's slots carried along.

Shared by ``callbacks`` and ``compression`` (which therefore do not import each
other).
"""

import numpy as np
from keras import ops

from keras_lowrank._keras_compat import all_sublayers
from keras_lowrank._low_rank import host_factorization as host
from keras_lowrank._low_rank.optimizer_slots import optimizer_slots, slot_kind
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
from keras_lowrank.optimizers import DLRT


def low_rank_layers(model):
    """The dynamic low-rank layers of a model (nested models and layers included).

    Args:
        model: a Keras model or layer.

    Returns:
        a list of ``DynamicLowRankDense`` / ``DynamicLowRankConv2D`` layers.

    Examples:

        >>> import keras
        >>> from keras_lowrank import DynamicLowRankDense
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4),
        ...                           DynamicLowRankDense(3, name="low_rank")])
        >>> [layer.name for layer in low_rank_layers(model)]
        ['low_rank']
    """
    return [layer for layer in all_sublayers(model) if isinstance(layer, DynamicLowRankBase)]


def condition_number(layer):
    """cond(S_r) = σ_max / σ_min of the active block (= cond(W), U and V orthonormal).

    Args:
        layer: a built dynamic low-rank layer.

    Returns:
        a float (inf when S_r is singular).

    Examples:

        >>> import keras
        >>> from keras_lowrank import DynamicLowRankDense
        >>> layer = DynamicLowRankDense(4, max_rank=2)
        >>> layer.build((None, 4))
        >>> layer.set_factors(np.eye(4, 2), np.diag([3.0, 0.5]), np.eye(4, 2))
        >>> condition_number(layer)
        6.0
    """
    _, s, _ = layer.factors()
    d = np.linalg.svd(s, compute_uv=False)
    return float(d[0] / d[-1]) if d[-1] > 0 else float("inf")


def dlrt_of(optimizer):
    """The DLRT optimizer ``optimizer`` is or wraps (LossScaleOptimizer(DLRT(…))), or None.

    Args:
        optimizer: a Keras optimizer, or None.

    Returns:
        the ``DLRT`` instance, or None.

    Examples:

        >>> import keras
        >>> dlrt = DLRT(keras.optimizers.SGD())
        >>> dlrt_of(keras.optimizers.LossScaleOptimizer(dlrt)) is dlrt, dlrt_of(keras.optimizers.SGD())
        (True, None)
    """
    while optimizer is not None:
        if isinstance(optimizer, DLRT):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def check_finite(layer, caller):
    values = [ops.convert_to_numpy(v) for v in (layer.u, layer.s, layer.v)]
    if not all(bool(np.all(np.isfinite(t))) for t in values):
        raise FloatingPointError(
            f"{caller}: layer {layer.name!r} has non-finite factors; not changing them "
            "(the loss diverged — lower the learning rate).")


def truncate_layer(layer, optimizer=None):
    """Re-orthonormalises U, V and truncates the layer by its ``tol`` and
    ``min_rank``, carrying ``optimizer``'s slots of the factors into the new bases
    as the gradients they average transform (G = ∂L/∂W, W kept): ∇U' = ∇U Aᵀ,
    ∇V' = ∇V Bᵀ with A = U'ᵀU, B = V'ᵀV, and, U' lying in span(U),
    ∇S' = A (UᵀU)⁺ ∇S (VᵀV)⁺ Bᵀ (A ∇S Bᵀ for orthonormal U, V, as in DLRT). Zeroing
    them instead would, with Keras' bias correction by the global step, make the
    next Adam steps several learning rates long. Eager."""
    old = [ops.convert_to_numpy(v) for v in (layer.u, layer.s, layer.v)]
    new = host.truncate(*host.orthonormalize(*old), layer.tol, layer.min_rank)
    carry_slots(optimizer, layer, old, new)
    for variable, value in zip((layer.u, layer.s, layer.v), new):
        host.assign(variable, value)


def carry_slots(optimizer, layer, old, new):
    """Moves ``optimizer``'s slots of U, S, V from the factors ``old`` to ``new``
    (see ``truncate_layer``)."""
    u0, _, v0 = (np.asarray(t, np.float64) for t in old)
    a, b = host.basis_change(u0, v0, new[0], new[2])
    a_s = a @ np.linalg.pinv(u0.T @ u0)  # pinv: the zero columns beyond the rank
    b_s = b @ np.linalg.pinv(v0.T @ v0)
    for variable, left, right in ((layer.u, None, a), (layer.s, a_s, b_s), (layer.v, None, b)):
        for slot in optimizer_slots(optimizer, variable):
            kind = slot_kind(slot, variable)
            host.assign(slot, host.carry_slot(ops.convert_to_numpy(slot), left, right, kind))
