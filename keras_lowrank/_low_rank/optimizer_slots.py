"""The wrapped optimizer's slots (moments, momenta) of a factor, and how each
kind moves when the factor changes basis (``factorization.carry_slot``).

Shared by ``optimizers.DLRT`` (augment / truncate inside the train step) and the
callbacks (truncation between steps).
"""

from keras_lowrank._keras_compat import slot_name_prefix

# How each Keras optimizer slot moves with its variable's basis, by the slot's
# name suffix (``add_variable_from_reference`` names); unknown slots are reset.
SLOT_KINDS = {
    "momentum": "linear", "average_gradient": "linear", "linear": "linear",
    "velocity": "square", "velocity_hat": "square", "accumulator": "square",
    "accumulated_grad": "square", "accumulated_delta_var": "square", "norm": "magnitude",
    # use_ema=True: the moving average of S lives in S's basis and moves like S
    # (reset, it would be copied over S when fit ends: a zero kernel).
    "average": "linear",
}



def optimizer_slots(optimizer, variable):
    """The optimizer variables Keras derived from ``variable`` (moments, momenta):
    ``add_variable_from_reference`` names them ``{variable.path with _}_{slot}``."""
    if optimizer is None:
        return []
    inner = getattr(optimizer, "inner_optimizer", None)
    candidates = inner.variables if inner is not None else optimizer.variables
    prefix = slot_name_prefix(variable)
    return [
        slot for slot in candidates
        if slot.name.startswith(prefix) and tuple(slot.shape) == tuple(variable.shape)
    ]


def slot_kind(slot, variable):
    """The SLOT_KINDS entry of ``slot`` (named ``{variable.path with _}_{suffix}``)."""
    return SLOT_KINDS.get(slot.name[len(slot_name_prefix(variable)):], "reset")
