"""AutoAttack's losses (DLR, targeted DLR, the margin) and the per-example pieces its
attacks share."""


import numpy as np
from keras import ops

_EPS_DIV = 1e-12  # the authors' guard in normalisations and the DLR denominator


# ----------------------------------------------------------------------------- pieces


def _per_example(v, x):
    """A (batch,) vector shaped to broadcast against ``x``. Indexing with None, which
    every backend's tensors do natively: on torch ``ops.reshape`` costs ~10× more, and
    an attack's loop calls this several times per iteration."""
    return v[(slice(None),) + (None,) * (len(x.shape) - 1)]


def _flat(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _normalize(d, norm):
    """d / (‖d‖ + 1e-12) per example (‖·‖∞ or ‖·‖₂)."""
    if norm == "inf":
        size = ops.max(ops.abs(_flat(d)), axis=1)
    else:
        size = ops.sqrt(ops.sum(ops.square(_flat(d)), axis=1))
    return d / _per_example(size + _EPS_DIV, d)


def _l2(d):
    return ops.sqrt(ops.sum(ops.square(_flat(d)), axis=1))


def _take_label(z, y):
    return ops.squeeze(ops.take_along_axis(z, ops.expand_dims(ops.cast(y, "int32"), 1), axis=1), 1)


def dlr_loss(logits, y):
    """Difference of logits ratio: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12),
    per example (z sorted z_π1 ≥ z_π2 ≥ …; needs ≥ 3 classes). Invariant to
    shifting and positively scaling the logits.

    Args:
        logits: (batch, classes ≥ 3) logits.
        y: (batch,) integer labels.

    Returns:
        (batch,) losses; positive once the example is misclassified.

    Examples:
        >>> z = np.array([[3.0, 1.0, 0.0]], "float32")
        >>> round(float(ops.convert_to_numpy(dlr_loss(z, np.array([0])))[0]), 4)  # −(3 − 1) / (3 − 0)
        -0.6667
    """
    zs = ops.sort(logits, axis=-1)
    zy = _take_label(logits, y)
    top_is_y = ops.equal(ops.argmax(logits, axis=-1), ops.cast(y, "int32"))
    other = ops.where(top_is_y, zs[:, -2], zs[:, -1])
    return -(zy - other) / (zs[:, -1] - zs[:, -3] + _EPS_DIV)


# z_π1 − (z_π3 + z_π4)/2: the fewest classes APGD-T (and so AutoAttack) can attack
TARGETED_DLR_MIN_CLASSES = 4
# z_π1 − z_π3: the fewest classes the (untargeted) DLR loss can attack
DLR_MIN_CLASSES = 3


def targeted_dlr_loss(logits, y, target):
    """Targeted DLR: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12), per example
    (needs ≥ 4 classes).

    Args:
        logits: (batch, classes ≥ 4) logits.
        y: (batch,) true labels.
        target: (batch,) target classes.

    Returns:
        (batch,) losses, larger as z_t overtakes z_y.

    Examples:
        >>> z = np.array([[4.0, 2.0, 1.0, 0.0]], "float32")
        >>> round(float(ops.convert_to_numpy(targeted_dlr_loss(z, np.array([0]), np.array([1])))[0]), 4)
        -0.5714
    """
    zs = ops.sort(logits, axis=-1)
    return -(_take_label(logits, y) - _take_label(logits, target)) / (
        zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + _EPS_DIV)


def _margin(logits, y):
    """z_y − max_{i≠y} z_i (Square's loss)."""
    classes = logits.shape[-1]
    mask = ops.one_hot(ops.cast(y, "int32"), classes)
    others = ops.max(ops.where(mask > 0, -np.inf, logits), axis=-1)
    return _take_label(logits, y) - others
