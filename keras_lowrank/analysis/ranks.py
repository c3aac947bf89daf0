"""Measures of rank of a representation matrix (keras_lowrank/methods.md §5).

For a matrix A (samples × features; conv maps are flattened per sample) with
singular values σ₁ ≥ σ₂ ≥ … :

- effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σ_j σ_j
- stable rank: ‖A‖_F² / ‖A‖₂² = Σ σ_i² / σ₁²
- variance rank at threshold t: the smallest k with Σ_{i≤k} σ_i² ≥ t · Σ σ_i²

``center=True`` subtracts the column means first (the rank of the covariance).
The math runs in ``keras.ops`` on any backend; results are Python numbers.
"""

import numpy as np
from keras import ops


def _as_matrix(x, center):
    x = ops.convert_to_tensor(x)
    if len(x.shape) < 2:
        raise ValueError(
            f"`x` must have a batch axis and feature axes (rank ≥ 2), got shape "
            f"{tuple(x.shape)}."
        )
    x = ops.reshape(ops.cast(x, "float32"), (x.shape[0], -1))
    if center:
        x = x - ops.mean(x, axis=0, keepdims=True)
    return x


def singular_values(x, center=False):
    """Singular values of ``x`` (batch × features...), descending.

    Args:
        x: an array or tensor with a batch axis; the other axes are flattened.
        center: subtract the column means first.

    Returns:
        a float64 numpy array of the singular values, largest first.

    Examples:

        >>> singular_values(np.diag([3.0, 4.0])).round(4).tolist()
        [4.0, 3.0]
    """
    s = ops.svd(_as_matrix(x, center), full_matrices=False, compute_uv=False)
    return np.sort(np.asarray(ops.convert_to_numpy(s), dtype=np.float64))[::-1]


def _check_spectrum(s):
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(
            "`singular_values` must be a 1-D array of finite, non-negative values."
        )
    return np.sort(s)[::-1]


def effective_rank_from_singular_values(s):
    """Effective rank exp(H(p)), p_i = σ_i / Σσ, of a spectrum.

    Args:
        s: singular values (1-D, finite, ≥ 0; any order).

    Returns:
        a float in [1, len(s)], or 0.0 for an all-zero spectrum.

    Examples:

        >>> effective_rank_from_singular_values([1.0, 1.0, 0.0])
        2.0
    """
    s = _check_spectrum(s)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank_from_singular_values(s):
    """Stable rank Σσ² / σ_max² of a spectrum.

    Args:
        s: singular values (1-D, finite, ≥ 0; any order).

    Returns:
        a float in [1, len(s)], or 0.0 for an all-zero spectrum.

    Examples:

        >>> stable_rank_from_singular_values([2.0, 1.0])
        1.25
    """
    s = _check_spectrum(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s**2) / s[0] ** 2)


def variance_rank_from_singular_values(s, threshold=0.99):
    """Smallest k whose k leading σ² explain ``threshold`` of Σσ².

    Args:
        s: singular values (1-D, finite, ≥ 0; any order).
        threshold: the fraction of Σσ² to explain, in (0, 1].

    Returns:
        an int k (0 for an all-zero spectrum).

    Examples:

        >>> variance_rank_from_singular_values([3.0, 1.0, 0.1], threshold=0.8)  # 9 of 10.01
        1
    """
    if not 0 < threshold <= 1:
        raise ValueError(
            f"`threshold` must be in (0, 1], got threshold={threshold!r}."
        )
    s = _check_spectrum(s)
    energy = s**2
    total = energy.sum()
    if total == 0:
        return 0
    explained = np.cumsum(energy) / total
    # A relative tolerance keeps threshold=1.0 from counting rounding noise.
    return int(np.searchsorted(explained, threshold - 1e-12) + 1)


def effective_rank(x, center=False):
    """Effective rank (Roy & Vetterli) of ``x`` (batch × features...).

    Args:
        x: an array or tensor with a batch axis; the other axes are flattened.
        center: subtract the column means first.

    Returns:
        a float (see ``effective_rank_from_singular_values``).

    Examples:

        >>> round(effective_rank(np.eye(3)), 4)
        3.0

    References:
        - Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
    """
    return effective_rank_from_singular_values(singular_values(x, center))


def stable_rank(x, center=False):
    """Stable rank ‖x‖_F² / ‖x‖₂² of ``x`` (batch × features...).

    Args:
        x: an array or tensor with a batch axis; the other axes are flattened.
        center: subtract the column means first.

    Returns:
        a float (see ``stable_rank_from_singular_values``).

    Examples:

        >>> round(stable_rank(np.diag([2.0, 1.0])), 4)
        1.25
    """
    return stable_rank_from_singular_values(singular_values(x, center))


def variance_rank(x, threshold=0.99, center=False):
    """Number of leading directions holding ``threshold`` of Σσ² of ``x``.

    Args:
        x: an array or tensor with a batch axis; the other axes are flattened.
        threshold: the fraction of Σσ² to explain, in (0, 1].
        center: subtract the column means first.

    Returns:
        an int (see ``variance_rank_from_singular_values``).

    Examples:

        >>> x = np.random.default_rng(0).normal(size=(100, 2)) @ np.ones((2, 10))
        >>> variance_rank(x)  # ten features, all in a 1-D span
        1
    """
    return variance_rank_from_singular_values(singular_values(x, center), threshold)
