"""``factorization``'s basis changes in NumPy (float64): DLRT's augment and truncate
on a CPU (JAX; TensorFlow without XLA: a host callback in the compiled step, see
``DLRT._step``), and the
steps taken eagerly: DLRT finishing its cycle when ``fit`` ends, ``truncate_ranks`` /
``RankTruncation``, ``SpectralConditioning``, a layer's rank.

Why not ``factorization``'s ``keras.ops`` functions there: run eagerly on JAX, every
op is compiled for its shapes on first use, so finishing the cycle of MobileNetV2's
29 low-rank layers at the end of a first ``fit`` call compiled 133 small programs, a
large part of that call (figures: docs/benchmarks.md). NumPy runs them at once, and in
float64.
The formulas are ``factorization``'s (keras_lowrank/methods.md §2), the QRs here of the
kept columns only (the same reflectors, so the same factors); the tests hold the two equal,
the bases' signs included: Householder QR (LAPACK, as ``keras.ops.qr`` on a CPU) on both
sides. Every basis is valid, but the second moments DLRT carries into a new basis,
(A √v Bᵀ)², depend on its columns' signs: Cholesky-QR (R's diagonal positive) here, faster
on these tall, narrow matrices, trained a rank-3 target to rank 12 where Householder's
signs reach 3-4 (docs/benchmarks.md). Arguments are NumPy arrays
(``ops.convert_to_numpy`` of the variables); results are float64 arrays, which ``assign``
casts to the variable's dtype.
"""

import numpy as np


def active_rank(u):
    """Number of non-zero columns of U (a Python int)."""
    return int(np.count_nonzero(np.any(np.asarray(u) != 0, axis=0)))


def _leading(rank, size):
    return (np.arange(size) < rank).astype(np.float64)


def _padded(x, columns):
    """x (n × c) with zero columns appended up to ``columns``."""
    padded = np.zeros((x.shape[0], columns))
    padded[:, :x.shape[1]] = x
    return padded


def augment(u, s, v, grad_u, grad_v, max_rank):
    """``factorization.augment``: U₁ = orth([U_r, −∇_U L]), V₁ likewise, r₁ = min(r_max, 2r).

    The first r₁ columns of a QR factor depend only on the first r₁ columns of its
    argument: [U_r, −∇_U L] is cut to U_r and the gradient's first r₁ − r columns."""
    u, s, v, grad_u, grad_v = (np.asarray(t, np.float64) for t in (u, s, v, grad_u, grad_v))
    rank = active_rank(u)
    added = min(max_rank, 2 * rank) - rank

    def orthonormal(factor, grad):
        return _padded(np.linalg.qr(np.concatenate([factor[:, :rank], -grad[:, :added]], axis=1))[0],
                       max_rank)

    u1, v1 = orthonormal(u, grad_u), orthonormal(v, grad_v)
    return u1, (u1.T @ u) @ (s @ (v.T @ v1)), v1


def truncation_rank(singular_values, tol, min_rank, max_rank):
    """``factorization.truncation_rank``: smallest j with ‖d[j:]‖ < tol·‖d‖, clipped."""
    squares = np.square(singular_values)
    tails = np.cumsum(squares[::-1])[::-1]
    rank = int(np.sum(tails >= tol**2 * np.sum(squares)))
    return int(np.clip(rank, min_rank, max_rank))


def truncate(u, s, v, tol, min_rank):
    """``factorization.truncate``: SVD of S, the tol rule, re-orthonormalised bases."""
    u, s, v = (np.asarray(t, np.float64) for t in (u, s, v))
    rank = active_rank(u)
    p, d, qt = np.linalg.svd(s)
    new_rank = truncation_rank(d, tol, min(min_rank, rank), rank)
    qu, ru = np.linalg.qr(u @ p[:, :new_rank])
    qv, rv = np.linalg.qr(v @ qt[:new_rank].T)
    s_new = np.zeros_like(s)
    s_new[:new_rank, :new_rank] = (ru * d[:new_rank]) @ rv.T
    return _padded(qu, u.shape[1]), s_new, _padded(qv, v.shape[1])


def orthonormalize(u, s, v):
    """``factorization.orthonormalize``: U = Q_U R_U, V = Q_V R_V, S ← R_U S R_Vᵀ."""
    u, s, v = (np.asarray(t, np.float64) for t in (u, s, v))
    keep = _leading(active_rank(u), u.shape[1])
    qu, ru = np.linalg.qr(u)
    qv, rv = np.linalg.qr(v)
    s_new = ru @ s @ rv.T
    return qu * keep, s_new * keep[:, None] * keep[None, :], qv * keep


def basis_change(u_old, v_old, u_new, v_new):
    """``factorization.basis_change``: (A, B) = (U_newᵀ U_old, V_newᵀ V_old)."""
    return np.asarray(u_new).T @ np.asarray(u_old), np.asarray(v_new).T @ np.asarray(v_old)


def carry_slot(x, a, b, kind):
    """``factorization.carry_slot``: a slot carried into the basis (A, B)."""
    x = np.asarray(x, np.float64)

    def transform(t):
        t = t if a is None else a @ t
        return t if b is None else t @ np.asarray(b).T

    if kind == "linear":
        return transform(x)
    if kind == "square":
        return np.square(transform(np.sqrt(np.maximum(x, 0.0))))
    if kind == "magnitude":
        return np.abs(transform(x))
    return np.zeros_like(x)


def condition(s, rank, kappa):
    """``factorization.condition``: S_r's singular values clamped so cond(S_r) ≤ κ."""
    s = np.asarray(s, np.float64)
    p, d, qt = np.linalg.svd(s)
    keep = _leading(rank, s.shape[0])
    mean = np.sum(d * keep) / max(rank, 1)
    t = (kappa - 1.0) / (kappa + 1.0)
    return (p * (np.clip(d, mean * (1.0 - t), mean * (1.0 + t)) * keep)) @ qt


def assign(variable, value):
    """``variable.assign`` of a NumPy result, cast on the host (an eager cast on JAX
    would compile for the shape)."""
    variable.assign(np.asarray(value).astype(variable.dtype))
