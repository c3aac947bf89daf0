"""Measures of rank of a representation matrix (docs/methods.md §5).

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
    """Singular values of ``x`` (batch × features...), descending, as numpy."""
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
    """exp(H(p)) with p_i = σ_i / Σσ; 0 for an all-zero spectrum."""
    s = _check_spectrum(s)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def stable_rank_from_singular_values(s):
    """Σσ² / σ_max²; 0 for an all-zero spectrum."""
    s = _check_spectrum(s)
    if s.size == 0 or s[0] == 0:
        return 0.0
    return float(np.sum(s**2) / s[0] ** 2)


def variance_rank_from_singular_values(s, threshold=0.99):
    """Smallest k whose k leading σ² explain ``threshold`` of Σσ²."""
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
    """Effective rank (Roy & Vetterli) of ``x`` (batch × features...)."""
    return effective_rank_from_singular_values(singular_values(x, center))


def stable_rank(x, center=False):
    """Stable rank ‖x‖_F² / ‖x‖₂² of ``x`` (batch × features...)."""
    return stable_rank_from_singular_values(singular_values(x, center))


def variance_rank(x, threshold=0.99, center=False):
    """Number of leading directions holding ``threshold`` of Σσ² of ``x``."""
    return variance_rank_from_singular_values(singular_values(x, center), threshold)
