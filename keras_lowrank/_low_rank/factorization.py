"""Pure functions on a weight held as W = U S Vᵀ at a fixed maximal rank.

Storage convention (used by the dynamic low-rank layers, the DLRT optimizer and
the callbacks): U is n_in × r_max, V is n_out × r_max, S is r_max × r_max. The
active rank r is the number of leading non-zero columns of U; columns r… of U
and V and rows/columns r… of S are exactly zero. Zero columns make the forward
pass x U S Vᵀ and its gradients right without any mask, so changing the rank
changes no variable shape (as in the authors' code, keras_lowrank/methods.md §2) and the rank
travels with the trainable variables on every backend.

Formulas: keras_lowrank/methods.md §2 (Schotthöfer et al. 2025, augmented BUG integrator;
Savostianova et al. 2023, CondLR conditioning).
"""

from keras import ops

from keras_lowrank.precision import float32_matmuls

# Added under the square root of the spectral penalty so that its gradient is
# finite where S Sᵀ = α² I (keras_lowrank/methods.md §2).
SPECTRAL_EPSILON = 1e-12


def active_rank(u):
    """Number of non-zero columns of U (an int tensor)."""
    nonzero = ops.any(ops.not_equal(u, 0), axis=0)
    return ops.sum(ops.cast(nonzero, "int32"))


def leading_mask(rank, size, dtype="float32"):
    """(size,) vector with ones in the first ``rank`` entries."""
    return ops.cast(ops.arange(size) < rank, dtype)


def all_finite(*tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))


def _orthonormal_columns(a, keep):
    """Q of the QR factorisation of ``a``, columns ≥ ``keep`` zeroed. Householder
    QR keeps Q orthonormal even where ``a`` is rank-deficient. Its signs matter: DLRT's
    carried second moments depend on them (``host_factorization``)."""
    q, _ = ops.qr(a, mode="reduced")
    q = q[:, : a.shape[1]]
    return q * leading_mask(keep, a.shape[1], q.dtype)


@float32_matmuls()
def augment(u, s, v, grad_u, grad_v, max_rank):
    """Basis augmentation (keras_lowrank/methods.md §2, step 1): r₁ = min(r_max, 2r),
    U₁ = orth([U_r, −∇_U L])[:, :r₁], V₁ likewise, S ← (U₁ᵀ U_r) S_r (V_rᵀ V₁).

    The first r₁ columns of a QR factor depend only on the first r₁ columns of
    its argument, so [U_r, −∇_U L] is gathered into r_max columns (U's active
    columns, then the gradient's) and one reduced QR gives U₁.
    """
    rank = active_rank(u)
    new_rank = ops.minimum(max_rank, 2 * rank)
    positions = ops.arange(max_rank)
    take = ops.where(positions < rank, positions, max_rank + positions - rank)
    take = ops.minimum(take, 2 * max_rank - 1)
    u_mask = leading_mask(rank, max_rank, u.dtype)
    stacked_u = ops.concatenate([u, -grad_u * u_mask], axis=1)
    stacked_v = ops.concatenate([v, -grad_v * u_mask], axis=1)
    u1 = _orthonormal_columns(ops.take(stacked_u, take, axis=1), new_rank)
    v1 = _orthonormal_columns(ops.take(stacked_v, take, axis=1), new_rank)
    s1 = ops.matmul(
        ops.matmul(ops.transpose(u1), u),
        ops.matmul(s, ops.matmul(ops.transpose(v), v1)),
    )
    return u1, s1, v1


def truncation_rank(singular_values, tol, min_rank, max_rank):
    """Smallest j with ‖d[j:]‖₂ < tol·‖d‖₂, clipped to [min_rank, max_rank]
    (keras_lowrank/methods.md §2, step 3). ``singular_values`` sorted in decreasing order."""
    squares = ops.square(singular_values)
    tails = ops.flip(ops.cumsum(ops.flip(squares, 0)), 0)  # Σ_{i≥j} d_i²
    threshold = (tol**2) * ops.sum(squares)
    rank = ops.sum(ops.cast(tails >= threshold, "int32"))
    return ops.clip(rank, min_rank, max_rank)


@float32_matmuls()
def truncate(u, s, v, tol, min_rank):
    """Rank truncation (keras_lowrank/methods.md §2, step 3): P, d, Q = svd(S_r); keep the r_new
    leading triplets, U ← U_r P, V ← V_r Q, S ← diag(d).

    U P and V Q are re-orthonormalised by QR, with S ← R_U diag(d) R_Vᵀ so that
    the product U S Vᵀ is unchanged; this removes the drift of repeated updates
    and stays exact where d has zeros. Returns (U, S, V)."""
    rank = active_rank(u)
    max_rank = u.shape[1]
    p, d, qt = ops.svd(s, full_matrices=True)
    new_rank = truncation_rank(d, tol, ops.minimum(min_rank, rank), rank)
    keep = leading_mask(new_rank, max_rank, u.dtype)
    u_rot = ops.matmul(u, p) * keep
    v_rot = ops.matmul(v, ops.transpose(qt)) * keep
    qu, ru = ops.qr(u_rot, mode="reduced")
    qv, rv = ops.qr(v_rot, mode="reduced")
    s_new = ops.matmul(ru * (d * keep), ops.transpose(rv))
    # Columns beyond the new rank: R has zero columns there, Q arbitrary ones.
    return qu * keep, s_new * keep[:, None] * keep[None, :], qv * keep


@float32_matmuls()
def basis_change(u_old, v_old, u_new, v_new):
    """(A, B) with S_new = A S_old Bᵀ, A = U_newᵀ U_old, B = V_newᵀ V_old: exact
    for augmentation and truncation, whose new bases contain or lie in the old
    ones (W = U S Vᵀ is kept on the shared subspace)."""
    return (ops.matmul(ops.transpose(u_new), u_old), ops.matmul(ops.transpose(v_new), v_old))


@float32_matmuls()
def carry_slot(x, a, b, kind):
    """An optimizer slot of S carried into the basis (A, B) of ``basis_change``,
    as the authors' code carries Adam's moments (RobustDLRT, augment/truncate):
    "linear" (first moments, momenta) like S, A x Bᵀ; "square" (second moments)
    as (A √x Bᵀ)²; "magnitude" (Adamax' ∞-norm) as |A x Bᵀ|; anything else is
    reset to zero. ``a`` or ``b`` None stands for the identity (slots of U: x Aᵀ)."""

    def transform(t):
        t = t if a is None else ops.matmul(a, t)
        return t if b is None else ops.matmul(t, ops.transpose(b))

    if kind == "linear":
        return transform(x)
    if kind == "square":
        return ops.square(transform(ops.sqrt(ops.maximum(x, 0.0))))
    if kind == "magnitude":
        return ops.abs(transform(x))
    return ops.zeros_like(x)


@float32_matmuls()
def condition(s, rank, kappa):
    """CondLR projection (Savostianova et al. 2023): clamp the singular values of
    S_r to [s̄(1 − t), s̄(1 + t)], t = (κ − 1)/(κ + 1), s̄ their mean, so that
    cond(S_r) ≤ κ. Returns the new S (same singular vectors)."""
    size = s.shape[0]
    p, d, qt = ops.svd(s, full_matrices=True)
    keep = leading_mask(rank, size, s.dtype)
    mean = ops.sum(d * keep) / ops.cast(ops.maximum(rank, 1), s.dtype)
    t = (kappa - 1.0) / (kappa + 1.0)
    d_new = ops.clip(d, mean * (1.0 - t), mean * (1.0 + t)) * keep
    return ops.matmul(p * d_new, qt)


def spectral_penalty(s, rank):
    """‖S_r S_rᵀ − α² I_r‖_F with α² = ‖S_r‖_F² / r (the paper's regularizer
    without β; keras_lowrank/methods.md §2), as √(x + ε) so that the gradient is finite at 0."""
    size = s.shape[0]
    keep = leading_mask(rank, size, s.dtype)
    alpha2 = ops.sum(ops.square(s)) / ops.cast(ops.maximum(rank, 1), s.dtype)
    gram = ops.matmul(s, ops.transpose(s))
    residual = gram - alpha2 * ops.diag(keep)
    return ops.sqrt(ops.sum(ops.square(residual)) + SPECTRAL_EPSILON)


@float32_matmuls()
def orthonormalize(u, s, v):
    """Re-orthonormalise factors moved by an ordinary optimizer: U = Q_U R_U,
    V = Q_V R_V, S ← R_U S R_Vᵀ, so that U S Vᵀ is unchanged. Zero columns of U
    and V (beyond the active rank) stay zero."""
    keep = leading_mask(active_rank(u), u.shape[1], u.dtype)
    qu, ru = ops.qr(u, mode="reduced")
    qv, rv = ops.qr(v, mode="reduced")
    s_new = ops.matmul(ops.matmul(ru, s), ops.transpose(rv))
    return qu * keep, s_new * keep[:, None] * keep[None, :], qv * keep
