"""Singular value decompositions of concrete (numpy) kernel matrices, in float64.

Used where a kernel is factorised once, outside any compiled step: ``to_low_rank``
and the default initialisation of the dynamic low-rank layers. LAPACK's full SVD,
or SciPy's ARPACK for the leading triplets only where that pays (SciPy is optional:
the full SVD without it). Written here rather than with ``keras.ops`` because Keras
has no truncated SVD.
"""

import numpy as np


def matrix_svd(matrix, rank=None):
    """(U, d, V) of a matrix in float64, singular values in decreasing order:
    all of them, or at least the leading ``rank``. For a given rank of a large matrix
    (≥ 256 on its short side, rank ≤ 1/8 of it) and SciPy present, only the leading
    triplets, by ARPACK (``scipy.sparse.linalg.svds``, converged to machine
    precision, fixed start vector): a 4096 × 4096 Dense kernel (VGG16's fc2) takes
    seconds instead of the tens of seconds of LAPACK's full SVD. ARPACK's answer is
    used only if finite and orthonormal to 1e-8; otherwise (or without SciPy) the full
    SVD. Both are a best rank-r approximation (Eckart–Young); where singular values
    tie at the cut, either may pick another of the equally good subspaces."""
    a = np.asarray(matrix, dtype="float64")
    if rank is not None and leading_pays(a.shape, rank):
        found = leading_svd(a, rank)
        if found is not None:
            return found
    u, d, vt = np.linalg.svd(a, full_matrices=False)
    return u, d, vt.T


def leading_pays(shape, rank):
    """Whether the leading ``rank`` triplets of a matrix of ``shape`` are worth
    ARPACK rather than a full SVD: ≥ 256 on the short side, rank ≤ 1/8 of it."""
    short = min(shape)
    return short >= 256 and 0 < rank <= short // 8


def leading_svd(a, rank):
    """(U, d, V) of the leading ``rank`` triplets of the float64 matrix ``a`` by ARPACK,
    in decreasing order; None without SciPy, where ARPACK fails, or where its answer is
    not finite and orthonormal to 1e-8."""
    try:
        from scipy.sparse.linalg import svds
    except ImportError:
        return None
    try:
        u, d, vt = svds(a, k=rank, tol=0, solver="arpack", random_state=0)
    except Exception:  # ARPACK did not converge, or a degenerate (e.g. zero) matrix
        return None
    order = np.argsort(d)[::-1]
    u, d, v = u[:, order], d[order], vt[order].T
    eye = np.eye(rank)
    if not (np.all(np.isfinite(d)) and np.allclose(u.T @ u, eye, atol=1e-8)
            and np.allclose(v.T @ v, eye, atol=1e-8)):
        return None
    return u, d, v
