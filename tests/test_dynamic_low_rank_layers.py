"""DynamicLowRankDense / Conv1D / Conv2D / EinsumDense and the factor math, against numpy and Keras' layers."""

import keras
import numpy as np
import pytest
from backend_gradients import input_gradient
from keras import ops

from keras_lowrank._low_rank import factorization
from keras_lowrank.layers import (
    DynamicLowRankConv1D,
    DynamicLowRankConv2D,
    DynamicLowRankDense,
    DynamicLowRankEinsumDense,
)
from keras_lowrank.optimizers import DLRT

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return ops.convert_to_numpy(x)


def _orthonormal(rng, n, r):
    q, _ = np.linalg.qr(rng.normal(size=(n, r)))
    return q.astype("float32")


def _pad(u, s, v, r_max):
    r = u.shape[1]
    pad = lambda a, rows, cols: np.pad(a, [(0, rows), (0, cols)])  # noqa: E731
    return pad(u, 0, r_max - r), pad(s, r_max - r, r_max - r), pad(v, 0, r_max - r)


@pytest.mark.parametrize("n_in,units,max_rank,rank", [(12, 7, 6, 3), (5, 9, 5, 5), (30, 30, 10, 1)])
def test_dense_equals_keras_dense_with_kernel_usvt(rng, n_in, units, max_rank, rank):
    layer = DynamicLowRankDense(units, max_rank=max_rank, rank=rank, activation="tanh")
    x = rng.normal(size=(4, n_in)).astype("float32")
    y = _np(layer(x))
    u, s, v = layer.factors()
    assert layer.rank == rank and u.shape == (n_in, rank) and v.shape == (units, rank)
    reference = keras.layers.Dense(units, activation="tanh")
    reference.build((None, n_in))
    reference.set_weights([(u @ s @ v.T).astype("float32"), _np(layer.bias)])
    np.testing.assert_allclose(y, _np(reference(x)), atol=2e-6)
    np.testing.assert_allclose(u.T @ u, np.eye(rank), atol=1e-5)
    np.testing.assert_allclose(v.T @ v, np.eye(rank), atol=1e-5)


@pytest.mark.parametrize(
    "kernel_size,strides,padding,dilation,rank",
    [(3, 1, "valid", 1, 4), ((3, 2), 2, "same", 1, 2), (3, 1, "same", 2, 6), (1, 1, "valid", 1, 3)],
)
def test_conv_equals_keras_conv2d_with_kernel_usvt(rng, kernel_size, strides, padding, dilation, rank):
    layer = DynamicLowRankConv2D(
        6, kernel_size, strides=strides, padding=padding, dilation_rate=dilation,
        max_rank=min(6, int(np.prod(kernel_size)) * 3), rank=rank,
    )
    x = rng.normal(size=(2, 9, 8, 3)).astype("float32")
    layer.build(x.shape)
    u_r, v_r = _orthonormal(rng, layer.n_in, rank), _orthonormal(rng, 6, rank)
    s_r = rng.normal(size=(rank, rank)).astype("float32")
    layer.set_factors(u_r, s_r, v_r)
    reference = keras.layers.Conv2D(
        6, kernel_size, strides=strides, padding=padding, dilation_rate=dilation
    )
    reference.build(x.shape)
    kernel = (u_r @ s_r @ v_r.T).reshape(reference.kernel.shape)
    reference.set_weights([kernel, _np(layer.bias)])
    np.testing.assert_allclose(_np(layer(x)), _np(reference(x)), atol=1e-5)
    assert layer.compute_output_shape(x.shape) == tuple(reference(x).shape)
    assert layer.rank == rank


@pytest.mark.parametrize(
    "kernel_size,strides,padding,dilation,rank",
    [(5, 1, "valid", 1, 4), (3, 2, "same", 1, 2), (3, 1, "same", 2, 6), (1, 1, "valid", 1, 3)],
)
def test_conv1d_equals_keras_conv1d_with_kernel_usvt(rng, kernel_size, strides, padding, dilation, rank):
    layer = DynamicLowRankConv1D(6, kernel_size, strides=strides, padding=padding, dilation_rate=dilation,
                                 max_rank=min(6, kernel_size * 3), rank=rank, activation="relu")
    x = rng.normal(size=(2, 17, 3)).astype("float32")
    layer.build(x.shape)
    u_r, v_r = _orthonormal(rng, layer.n_in, rank), _orthonormal(rng, 6, rank)
    s_r = rng.normal(size=(rank, rank)).astype("float32")
    layer.set_factors(u_r, s_r, v_r)
    reference = keras.layers.Conv1D(6, kernel_size, strides=strides, padding=padding, dilation_rate=dilation,
                                    activation="relu")
    reference.build(x.shape)
    kernel = (u_r @ s_r @ v_r.T).reshape(reference.kernel.shape)
    reference.set_weights([kernel, _np(layer.bias)])
    np.testing.assert_allclose(_np(layer(x)), _np(reference(x)), atol=1e-5)
    assert layer.compute_output_shape(x.shape) == tuple(reference(x).shape)
    assert tuple(layer.kernel.shape) == (kernel_size, 3, 6)
    dense_macs, low_macs = layer.multiply_adds()
    positions = reference(x).shape[1]
    assert (dense_macs, low_macs) == (positions * kernel_size * 3 * 6, positions * rank * (kernel_size * 3 + 6))


def test_conv1d_round_trips_through_a_keras_file(rng, tmp_path):
    model = keras.Sequential([keras.Input((20, 2)), DynamicLowRankConv1D(5, 3, max_rank=4, rank=2, name="c")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = rng.normal(size=(3, 20, 2)).astype("float32")
    assert type(loaded.get_layer("c")) is DynamicLowRankConv1D and loaded.get_layer("c").rank == 2
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), atol=1e-6)


@pytest.mark.own_precision
def test_augment_keeps_w_and_old_span_and_doubles_rank(rng):
    n, m, r_max, r = 20, 15, 8, 3
    u, s, v = _pad(_orthonormal(rng, n, r), rng.normal(size=(r, r)), _orthonormal(rng, m, r), r_max)
    grad_u, grad_v = rng.normal(size=(n, r_max)), rng.normal(size=(m, r_max))
    u1, s1, v1 = (_np(t) for t in factorization.augment(
        *(ops.convert_to_tensor(a.astype("float32")) for a in (u, s, v, grad_u, grad_v)), r_max))
    assert int(_np(factorization.active_rank(u1))) == 2 * r
    np.testing.assert_allclose(u1.T @ u1, np.diag([1.0] * 6 + [0.0] * 2), atol=1e-5)
    np.testing.assert_allclose(u1 @ s1 @ v1.T, u @ s @ v.T, atol=1e-5)  # W unchanged
    # span(U₁) ⊇ span(U_r) and contains the gradient directions
    projector = u1 @ u1.T
    np.testing.assert_allclose(projector @ u[:, :r], u[:, :r], atol=1e-5)
    np.testing.assert_allclose(projector @ grad_u[:, :r], grad_u[:, :r], atol=1e-4)
    # capped at r_max
    u2, _, _ = factorization.augment(*(ops.convert_to_tensor(a.astype("float32")) for a in (
        u1, s1, v1, rng.normal(size=(n, r_max)), rng.normal(size=(m, r_max)))), r_max)
    assert int(_np(factorization.active_rank(u2))) == r_max


@pytest.mark.own_precision
def test_carried_slots_keep_their_meaning_in_the_new_basis(rng):
    """A first moment M of S means U M Vᵀ in weight space: carried through an
    augmentation (nested bases) it means the same; through a truncation it is
    that matrix's projection on the kept bases. Second moments: exact when the
    basis change only permutes and flips columns."""
    n, m, r_max, r = 20, 15, 8, 3
    u, s, v = _pad(_orthonormal(rng, n, r), rng.normal(size=(r, r)), _orthonormal(rng, m, r), r_max)
    moment = np.zeros((r_max, r_max))
    moment[:r, :r] = rng.normal(size=(r, r))
    tensors = [ops.convert_to_tensor(a.astype("float32")) for a in (u, s, v)]
    u1, s1, v1 = factorization.augment(*tensors, *(ops.convert_to_tensor(
        rng.normal(size=shape).astype("float32")) for shape in ((n, r_max), (m, r_max))), r_max)
    a, b = factorization.basis_change(tensors[0], tensors[2], u1, v1)
    carried = _np(factorization.carry_slot(ops.convert_to_tensor(moment.astype("float32")), a, b, "linear"))
    np.testing.assert_allclose(_np(u1) @ carried @ _np(v1).T, u @ moment @ v.T, atol=1e-5)
    u2, _, v2 = (_np(t) for t in factorization.truncate(u1, s1, v1, 0.3, 1))
    a, b = factorization.basis_change(u1, v1, *(ops.convert_to_tensor(t) for t in (u2, v2)))
    carried = _np(factorization.carry_slot(ops.convert_to_tensor(moment.astype("float32")), a, b, "linear"))
    u1, v1 = _np(u1), _np(v1)
    np.testing.assert_allclose(u2 @ carried @ v2.T,
                               u2 @ u2.T @ (u1 @ moment @ v1.T) @ v2 @ v2.T, atol=1e-5)
    # second moments under a signed permutation of the columns
    perm_u, perm_v = np.eye(r_max)[rng.permutation(r_max)], np.eye(r_max)[rng.permutation(r_max)]
    perm_u[:, 0] *= -1
    square = rng.uniform(size=(r_max, r_max))
    for kind, expected in (("square", perm_u @ square @ perm_v.T),
                           ("magnitude", perm_u @ square @ perm_v.T)):
        got = factorization.carry_slot(*(ops.convert_to_tensor(t.astype("float32"))
                                         for t in (square, perm_u, perm_v)), kind)
        np.testing.assert_allclose(_np(got), np.abs(expected), atol=1e-5)
    assert not np.any(_np(factorization.carry_slot(ops.convert_to_tensor(square.astype("float32")),
                                                   perm_u.astype("float32"), perm_v.astype("float32"),
                                                   "unknown")))


@pytest.mark.own_precision
@pytest.mark.parametrize("tol", [0.05, 0.3])
def test_truncate_follows_the_tolerance_rule_and_keeps_orthonormality(rng, tol):
    n, m, r_max, r = 20, 15, 8, 6
    d = np.array([5.0, 3.0, 1.0, 0.5, 0.1, 0.01])
    p, q = _orthonormal(rng, r, r), _orthonormal(rng, r, r)
    u, s, v = _pad(_orthonormal(rng, n, r), (p * d) @ q.T, _orthonormal(rng, m, r), r_max)
    u1, s1, v1 = (_np(t) for t in factorization.truncate(
        *(ops.convert_to_tensor(a.astype("float32")) for a in (u, s, v)), tol, 1))
    tails = np.sqrt(np.cumsum((d**2)[::-1])[::-1])
    expected = int(np.argmax(tails < tol * np.linalg.norm(d)))
    rank = int(_np(factorization.active_rank(u1)))
    assert rank == expected
    np.testing.assert_allclose(u1[:, :rank].T @ u1[:, :rank], np.eye(rank), atol=1e-5)
    best = (u[:, :r] @ p[:, :rank] * d[:rank]) @ (v[:, :r] @ q[:, :rank]).T
    np.testing.assert_allclose(u1 @ s1 @ v1.T, best, atol=1e-4)  # Eckart–Young
    error = np.linalg.norm(u1 @ s1 @ v1.T - u @ s @ v.T)
    assert error < tol * np.linalg.norm(d)


def test_truncate_respects_min_rank(rng):
    u, s, v = _pad(_orthonormal(rng, 10, 4), np.diag([1.0, 1e-3, 1e-4, 0.0]), _orthonormal(rng, 9, 4), 6)
    u1, s1, v1 = (_np(t) for t in factorization.truncate(
        *(ops.convert_to_tensor(a.astype("float32")) for a in (u, s, v)), 0.1, 3))
    assert int(_np(factorization.active_rank(u1))) == 3
    np.testing.assert_allclose(u1[:, :3].T @ u1[:, :3], np.eye(3), atol=1e-5)


def test_condition_caps_condition_number(rng):
    r, r_max, kappa = 5, 7, 1.5
    s = np.zeros((r_max, r_max), "float32")
    s[:r, :r] = (_orthonormal(rng, r, r) * [10.0, 4.0, 1.0, 0.5, 0.1]) @ _orthonormal(rng, r, r).T
    s_new = _np(factorization.condition(ops.convert_to_tensor(s), r, kappa))
    d = np.linalg.svd(s_new[:r, :r], compute_uv=False)
    assert d.max() / d.min() <= kappa + 1e-4
    assert np.abs(s_new[r:]).max() == 0 and np.abs(s_new[:, r:]).max() == 0


@pytest.mark.own_precision
@pytest.mark.parametrize("tol,min_rank", [(0.05, 1), (0.3, 1), (0.3, 5), (0.0, 1)])
def test_host_factorization_equals_the_keras_ops_one(rng, tol, min_rank):
    """The float64 NumPy twins (DLRT's host callback on JAX's CPU, and the eager steps:
    the end of a cycle when fit stops, truncate_ranks, SpectralConditioning) give what
    factorization's keras.ops functions give in float32: rank, factors up to each
    column's sign (SVD and QR fix no sign), carried slots of every kind; augmentation the
    same rank, span and W. Tolerance: float32 rounding (≈1e-7) amplified by the smallest
    gap of d relative to its largest value (0.1 / 5) — 1e-4."""
    from keras_lowrank._low_rank import host_factorization as host

    n, m, r_max, r = 20, 15, 8, 6
    d = np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    u, s, v = _pad(_orthonormal(rng, n, r), (_orthonormal(rng, r, r) * d) @ _orthonormal(rng, r, r).T,
                   _orthonormal(rng, m, r), r_max)
    u, s, v = (a.astype("float32") for a in (u, s, v))
    tensors = [ops.convert_to_tensor(a) for a in (u, s, v)]
    want = [_np(t) for t in factorization.truncate(*tensors, tol, min_rank)]
    got = host.truncate(u, s, v, tol, min_rank)
    rank = host.active_rank(got[0])
    assert rank == int(_np(factorization.active_rank(want[0]))) == host.active_rank(want[0])
    assert rank < r or tol == 0.0
    signs_u = np.where(np.sum(want[0] * got[0], axis=0) < 0, -1.0, 1.0)
    signs_v = np.where(np.sum(want[2] * got[2], axis=0) < 0, -1.0, 1.0)
    np.testing.assert_allclose(got[0] * signs_u, want[0], atol=1e-4)
    np.testing.assert_allclose(got[2] * signs_v, want[2], atol=1e-4)
    np.testing.assert_allclose(signs_u[:, None] * got[1] * signs_v, want[1], atol=1e-4 * d[0])

    moment = rng.normal(size=(r_max, r_max)) * np.outer(np.arange(r_max) < r, np.arange(r_max) < r)
    a_want, b_want = factorization.basis_change(tensors[0], tensors[2], *(ops.convert_to_tensor(w)
                                                                          for w in (want[0], want[2])))
    a_got, b_got = host.basis_change(u, v, got[0], got[2])
    for kind, x in (("linear", moment), ("square", moment**2), ("magnitude", moment), ("other", moment)):
        carried = _np(factorization.carry_slot(ops.convert_to_tensor(x.astype("float32")), a_want, b_want, kind))
        mine = host.carry_slot(x, a_got, b_got, kind)
        if kind == "linear":  # flips with the bases' signs; the squares and magnitudes do not
            mine = signs_u[:, None] * mine * signs_v
        np.testing.assert_allclose(mine, carried, atol=1e-4 * np.abs(x).max())

    grads = [rng.normal(size=t.shape).astype("float32") for t in (u, v)]
    aug_want = [_np(t) for t in factorization.augment(*tensors, *(ops.convert_to_tensor(g) for g in grads), r_max)]
    aug_got = host.augment(u, s, v, *grads, r_max)
    assert host.active_rank(aug_got[0]) == host.active_rank(aug_want[0]) == min(r_max, 2 * r)
    for i in (0, 2):  # the same augmented spans
        np.testing.assert_allclose(aug_got[i] @ aug_got[i].T, aug_want[i] @ aug_want[i].T, atol=1e-4)
    np.testing.assert_allclose(aug_got[0] @ aug_got[1] @ aug_got[2].T, aug_want[0] @ aug_want[1] @ aug_want[2].T,
                               atol=1e-4 * d[0])

    ortho_want = [_np(t) for t in factorization.orthonormalize(*tensors)]
    ortho_got = host.orthonormalize(u * 2.0, s, v)  # U scaled: S takes the scale
    np.testing.assert_allclose(ortho_got[0] @ ortho_got[1] @ ortho_got[2].T,
                               2.0 * (ortho_want[0] @ ortho_want[1] @ ortho_want[2].T), atol=1e-4 * d[0])
    conditioned = host.condition(s, r, 1.5)
    np.testing.assert_allclose(conditioned, _np(factorization.condition(tensors[1], r, 1.5)), atol=1e-4 * d[0])


def _default_device_is_a_cpu():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_physical_devices("GPU")
    import torch

    return not torch.cuda.is_available()


@pytest.mark.own_precision
def test_host_factorization_gives_the_keras_ops_bases_with_their_signs(rng):
    """On a CPU DLRT augments and truncates in NumPy (the host callback, the end of a
    cycle) or with keras.ops (small models on JAX, torch, XLA): both must give the same
    bases, signs included — every basis is valid, but the second moments carried into a new
    basis, (A √v Bᵀ)², depend on its columns' signs, and a sign convention other than
    Householder QR's (R's diagonal made positive) trained a rank-3 target to rank 12
    instead of 3-4 in test_rank_goes_down_when_the_target_has_rank_three's setting
    (docs/benchmarks.md). Truth: the keras.ops functions (LAPACK or Eigen in float32);
    tolerance: float32 rounding amplified by d's smallest gap (≥ 0.05 of 5): 1e-4."""
    from keras_lowrank._low_rank import host_factorization as host

    if not _default_device_is_a_cpu():
        pytest.skip("the host functions stand in for keras.ops on a CPU")
    n, m, r_max = 20, 15, 8
    for r in (2, 4, 5, 8):
        d = np.linspace(5.0, 0.05 * r, r)
        u, s, v = _pad(_orthonormal(rng, n, r), (_orthonormal(rng, r, r) * d) @ _orthonormal(rng, r, r).T,
                       _orthonormal(rng, m, r), r_max)
        u, s, v = (a.astype("float32") for a in (u, s, v))
        grads = [rng.normal(size=t.shape).astype("float32") for t in (u, v)]
        tensors = [ops.convert_to_tensor(a) for a in (u, s, v, *grads)]
        for want, got in ((factorization.truncate(*tensors[:3], 0.3, 1), host.truncate(u, s, v, 0.3, 1)),
                          (factorization.augment(*tensors, r_max), host.augment(u, s, v, *grads, r_max))):
            for want_factor, got_factor, scale in zip(want, got, (1.0, d[0], 1.0)):
                np.testing.assert_allclose(got_factor, _np(want_factor), atol=1e-4 * scale)


def test_concrete_factors_are_decomposed_and_padded_in_numpy(rng, monkeypatch):
    """A drawn kernel and set_factors' factors are decomposed, truncated and padded in
    NumPy (float64) where they are concrete: eager keras.ops on JAX compile a program
    per op and shape (12 layers of distinct shapes built in 5.6 s against Dense's 2.6 s;
    to_low_rank(DenseNet121) 2.3 → 1.1 s). The ops they would use fail here; the
    factors are still the kernel's truncation."""
    def refuse(*args, **kwargs):
        raise AssertionError("an eager keras.ops call")

    kernel = rng.normal(size=(19, 13)).astype("float32")
    layer = DynamicLowRankDense(13, max_rank=5, rank=3, use_bias=False,
                                kernel_initializer=lambda shape, dtype=None: kernel)
    for name in ("svd", "pad", "diag", "reshape"):
        monkeypatch.setattr(keras.ops, name, refuse)
    layer.build((None, 19))
    layer.set_factors(_orthonormal(rng, 19, 2), np.diag([2.0, 1.0]), _orthonormal(rng, 13, 2))
    monkeypatch.undo()
    assert layer.rank == 2
    fresh = DynamicLowRankDense(13, max_rank=5, rank=3, use_bias=False,
                                kernel_initializer=lambda shape, dtype=None: kernel)
    fresh.build((None, 19))
    u, d, vt = np.linalg.svd(kernel.astype("float64"))
    np.testing.assert_allclose(_np(fresh.u) @ _np(fresh.s) @ _np(fresh.v).T,
                               (u[:, :3] * d[:3]) @ vt[:3], atol=1e-5 * d[0])


def test_finishing_a_cycle_compiles_nothing_on_jax(rng, jax_compiles):
    """Eager keras.ops on JAX compile a program per op and shape (MobileNetV2's first
    fit call spent 4.3 s there when fit ended mid-cycle); the end of a cycle, rank
    reads and truncate_ranks run in NumPy."""
    if keras.backend.backend() != "jax":
        pytest.skip("compiles of eager ops are JAX's")
    from keras_lowrank import DLRT, compression

    layer = DynamicLowRankDense(17, max_rank=9, rank=4, tol=0.3)  # shapes no other test uses
    model = keras.Sequential([keras.Input((23,)), layer])
    optimizer = DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=5)
    model.compile(optimizer, "mse")
    x = rng.normal(size=(8, 23)).astype("float32")
    model.train_on_batch(x, x[:, :17])
    model.jax_state_sync()
    with jax_compiles() as compiled:
        assert layer.rank == 8  # augmented
        assert optimizer.finish_cycle()
        assert layer.rank < 8
        compression.truncate_ranks(model)
    assert compiled == []


def test_spectral_penalty_equals_sqrt_r_times_std_of_squared_singular_values(rng):
    r, r_max = 4, 6
    s = np.zeros((r_max, r_max), "float32")
    s[:r, :r] = rng.normal(size=(r, r))
    sigma2 = np.linalg.svd(s[:r, :r], compute_uv=False) ** 2
    expected = np.sqrt(r) * sigma2.std()
    got = float(_np(factorization.spectral_penalty(ops.convert_to_tensor(s), r)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_spectral_penalty_gradient_is_finite_where_the_penalty_vanishes():
    s = np.diag([2.0, 2.0, 2.0, 0.0]).astype("float32")  # S Sᵀ = α² I on the active block
    assert float(_np(factorization.spectral_penalty(ops.convert_to_tensor(s), 3))) < 1e-5
    grad = input_gradient(lambda t: factorization.spectral_penalty(t, 3), s)
    assert np.all(np.isfinite(grad))


def test_spectral_weight_adds_a_loss_to_the_layer(rng):
    layer = DynamicLowRankDense(8, max_rank=6, rank=4, spectral_weight=0.5)
    layer(rng.normal(size=(2, 10)).astype("float32"))
    _, s, _ = layer.factors()
    sigma2 = np.linalg.svd(s, compute_uv=False) ** 2
    (loss,) = layer.losses
    np.testing.assert_allclose(float(_np(loss)), 0.5 * np.sqrt(4) * sigma2.std(), rtol=1e-4)
    assert DynamicLowRankDense(8, max_rank=6).losses == []


@pytest.mark.parametrize("n_in,units,max_rank,rank", [(10, 8, 6, 3), (300, 320, 16, 8)])
def test_from_scratch_factors_truncate_the_initializer_kernel(monkeypatch, n_in, units, max_rank, rank):
    """The factors are the rank-r truncation of the kernel a full layer would draw; a
    few of a large kernel's triplets come from ARPACK (no full SVD of the backend)."""
    from keras_lowrank.layers import dynamic_low_rank

    if n_in >= 256:
        pytest.importorskip("scipy")
        monkeypatch.setattr(dynamic_low_rank, "_svd_factors", lambda matrix: 1 / 0)
    initializer = keras.initializers.GlorotUniform(seed=3)
    layer = DynamicLowRankDense(units, max_rank=max_rank, rank=rank, kernel_initializer=initializer)
    layer.build((None, n_in))
    kernel = _np(keras.initializers.GlorotUniform(seed=3)((n_in, units))).astype("float64")
    u, d, vt = np.linalg.svd(kernel)
    np.testing.assert_allclose(_np(layer.kernel), (u[:, :rank] * d[:rank]) @ vt[:rank], atol=1e-5 * d[0])
    assert layer.rank == rank


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(units=4, max_rank=0), "max_rank"),
        (dict(units=4, max_rank=3, rank=5), "rank"),
        (dict(units=4, max_rank=3, min_rank=4), "min_rank"),
        (dict(units=4, tol=1.0), "tol"),
        (dict(units=4, tol=0.0), "tol"),
        (dict(units=4, spectral_weight=-1.0), "spectral_weight"),
        (dict(units=0), "units"),
        (dict(units=4, rank=2.5), "rank"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicLowRankDense(**kwargs)


def test_max_rank_above_matrix_size_is_an_error_at_build():
    with pytest.raises(ValueError, match="max_rank"):
        DynamicLowRankDense(4, max_rank=5).build((None, 10))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(groups=2), "groups"), (dict(data_format="channels_first"), "data_format"),
     (dict(padding="causal"), "padding"), (dict(strides=0), "strides")],
)
@pytest.mark.parametrize("kind", [DynamicLowRankConv1D, DynamicLowRankConv2D])
def test_conv_unsupported_arguments_are_errors(kwargs, match, kind):
    with pytest.raises(ValueError, match=match):
        kind(4, 3, **kwargs)


# -- EinsumDense ----------------------------------------------------------------
EINSUM_CASES = [
    # equation, output_shape, bias_axes, input shape, contracted letters, produced letters
    ("abc,cde->abde", (None, 4, 8), "de", (2, 5, 16), "c", "de"),     # attention query/key/value
    ("abcd,cde->abe", (None, 16), "e", (2, 5, 4, 8), "cd", "e"),      # attention output
    ("...b,bc->...c", (12,), "c", (2, 3, 7, 10), "b", "c"),           # Dense on any leading axes
    ("abc,dce->abde", (None, 3, 5), None, (2, 4, 6), "c", "de"),      # kernel axes interleaved
    ("ab...,bc->ac...", (5,), "c", (2, 6, 3), "b", "c"),              # trailing ellipsis
]


@pytest.mark.parametrize("equation,output_shape,bias_axes,shape,contracted,produced", EINSUM_CASES)
def test_einsum_dense_equals_keras_einsum_dense_with_kernel_usvt(
        rng, equation, output_shape, bias_axes, shape, contracted, produced):
    layer = DynamicLowRankEinsumDense(equation, output_shape, bias_axes=bias_axes, max_rank=3, rank=2,
                                      activation="relu", bias_initializer="random_normal")
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    u_r, v_r = _orthonormal(rng, layer.n_in, 2), _orthonormal(rng, layer.n_out, 2)
    s_r = rng.normal(size=(2, 2)).astype("float32")
    layer.set_factors(u_r, s_r, v_r)
    reference = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes, activation="relu")
    reference.build(x.shape)
    # The kernel from the factors by numpy's einsum over the equation's own letters:
    # U as (contracted axes, r), S Vᵀ as (r, produced axes).
    kernel_letters = equation.split(",")[1].split("->")[0]
    sizes = dict(zip(kernel_letters, reference.kernel.shape))
    u_axes = u_r.reshape(*[sizes[c] for c in contracted], 2)
    svt_axes = (s_r @ v_r.T).reshape(2, *[sizes[c] for c in produced])
    kernel = np.einsum(f"{contracted}Z,Z{produced}->{kernel_letters}", u_axes, svt_axes)
    reference.set_weights([kernel] + ([_np(layer.bias)] if bias_axes else []))
    expected = _np(reference(x))
    np.testing.assert_allclose(_np(layer(x)), expected, atol=1e-5)
    np.testing.assert_allclose(_np(layer.kernel), kernel, atol=1e-6)
    assert layer.compute_output_shape(x.shape) == expected.shape
    assert (layer.n_in, layer.n_out) == (int(np.prod([sizes[c] for c in contracted])),
                                         int(np.prod([sizes[c] for c in produced])))
    positions = expected[0].size // layer.n_out
    assert layer.multiply_adds() == (positions * layer.n_in * layer.n_out,
                                     positions * 2 * (layer.n_in + layer.n_out))
    # what the export writes: two Keras EinsumDense with kernels U_r and S_r V_rᵀ
    first, second = layer.exported_layers(2)
    exported = keras.Sequential([keras.Input(shape[1:]), first, second])
    first.kernel.assign(u_axes)
    second.kernel.assign(svt_axes)
    if bias_axes:
        second.bias.assign(_np(layer.bias))
    np.testing.assert_allclose(_np(exported(x)), expected, atol=1e-5)


@pytest.mark.parametrize("equation", ["abc,bcd->abd", "ab,bc->a", "ab,cd->abd", "ab,bc"])
def test_einsum_dense_refuses_kernels_that_are_no_single_matrix(equation):
    with pytest.raises(ValueError, match="equation"):
        DynamicLowRankEinsumDense(equation, (4,))


def test_einsum_dense_output_shape_is_checked_where_given():
    """0 or −3 got as far as build, to an error about `max_rank` and n_out = −3."""
    for bad in (0, -3, (None, 0), (2.5,), (True,)):
        with pytest.raises(ValueError, match=r"`output_shape` must hold positive ints"):
            DynamicLowRankEinsumDense("ab,bc->ac" if not isinstance(bad, tuple) or len(bad) == 1
                                      else "abc,cd->abd", bad)
    layer = DynamicLowRankEinsumDense("abc,cd->abd", (None, np.int64(6)), max_rank=2)
    assert layer(np.ones((2, 3, 4), "float32")).shape == (2, 3, 6)


def test_einsum_dense_bias_follows_bias_axes():
    with pytest.raises(ValueError, match="bias_axes"):
        DynamicLowRankEinsumDense("ab,bc->ac", 4, bias_axes=None, use_bias=True)
    layer = DynamicLowRankEinsumDense("abc,cde->abde", (None, 2, 3), bias_axes="e", max_rank=2)
    layer.build((1, 4, 5))
    assert tuple(layer.bias.shape) == (3,) and layer.use_bias


def test_einsum_dense_round_trips_through_a_keras_file(rng, tmp_path):
    model = keras.Sequential([keras.Input((6, 8)),
                              DynamicLowRankEinsumDense("abc,cde->abde", (None, 2, 4), bias_axes="de",
                                                        max_rank=4, rank=3, name="q")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    assert type(loaded.get_layer("q")) is DynamicLowRankEinsumDense and loaded.get_layer("q").rank == 3
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), atol=1e-6)


def test_config_rank_is_read_on_the_host_only_outside_a_trace():
    """``get_config()["rank"]``: the current rank where U holds values, the initial one
    inside a trace (a host read of a traced U cannot work), with no exception caught."""
    layer = DynamicLowRankDense(4, max_rank=4, rank=2)
    layer.build((None, 6))
    u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3)))
    layer.set_factors(u, np.diag([3.0, 2.0, 1.0]), np.eye(4)[:, :3])
    assert layer.rank == 3 and layer.get_config()["rank"] == 3
    seen = []
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.function(lambda: seen.append(layer.get_config()["rank"]) or tf.constant(0.0))()
    elif backend == "jax":
        import jax

        def traced(u):
            with keras.StatelessScope(state_mapping=[(layer.u, u)]):
                seen.append(layer.get_config()["rank"])
            return u

        jax.jit(traced)(layer.u.value)
    else:
        pytest.skip(f"no trace of layer state to test on {backend}")
    assert seen == [2]  # the initial rank


class SubclassedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = DynamicLowRankConv2D(6, 3, max_rank=4, padding="same", activation="relu")
        self.flatten = keras.layers.Flatten()
        self.dense = DynamicLowRankDense(4, max_rank=3)

    def call(self, x):
        return self.dense(self.flatten(self.conv(x)))


class CustomBlock(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = DynamicLowRankDense(8, max_rank=4, activation="relu")

    def call(self, x):
        return self.inner(x) + 1.0


def _numpy_forward(model, x):
    """The subclassed model computed in numpy from its factors."""
    conv, dense = model.conv, model.dense
    kernel = _np(conv.kernel)  # (3, 3, c_in, filters)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for i in range(3):
        for j in range(3):
            h += padded[:, i:i + x.shape[1], j:j + x.shape[2], :] @ kernel[i, j]
    h = np.maximum(h + _np(conv.bias), 0).reshape(len(x), -1)
    return h @ _np(dense.kernel) + _np(dense.bias)


def test_low_rank_layers_in_a_subclassed_model_call_fit_predict(rng):
    x = rng.uniform(size=(32, 5, 5, 2)).astype("float32")
    y = rng.integers(0, 4, size=32)
    for first in ("call", "predict", "fit"):  # whichever builds the model first
        keras.utils.set_random_seed(0)
        model = SubclassedNet()
        model.compile(DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3), LOSS)
        if first == "call":
            model(x[:2])
        elif first == "predict":
            model.predict(x, verbose=0)
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        np.testing.assert_allclose(model.predict(x, verbose=0), _numpy_forward(model, x),
                                   rtol=1e-4, atol=1e-4)
        for layer in (model.conv, model.dense):  # the integrator kept U orthonormal
            u = layer.factors()[0]
            np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-5)
    # a custom layer holding one, inside a functional model, built by its first call
    inputs = keras.Input((16,))
    block = CustomBlock()
    model = keras.Model(inputs, keras.layers.Dense(2)(block(inputs)))
    xs = rng.normal(size=(4, 16)).astype("float32")
    expected = np.maximum(xs @ _np(block.inner.kernel) + _np(block.inner.bias), 0) + 1.0
    np.testing.assert_allclose(_np(block(xs)), expected, rtol=1e-5, atol=1e-5)
    model.predict(xs, verbose=0)


@pytest.mark.tf_only("SavedModel export")
def test_subclassed_model_exports_a_saved_model(rng, tmp_path):
    import tensorflow as tf

    x = rng.uniform(size=(4, 5, 5, 2)).astype("float32")
    model = SubclassedNet()
    model(x)  # Keras exports built models only
    model.export(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # kept: it owns the variables
    served = loaded.serve(x)
    np.testing.assert_allclose(served.numpy(), _np(model(x)), atol=1e-5)


def test_set_factors_checks_what_it_is_given():
    layer = DynamicLowRankDense(6, max_rank=3)
    with pytest.raises(ValueError, match="not built"):
        layer.set_factors(np.eye(4, 2), np.ones(2), np.eye(6, 2))
    layer.build((None, 4))
    with pytest.raises(ValueError, match="`s` must hold finite"):
        layer.set_factors(np.eye(4, 2), np.array([1.0, np.nan]), np.eye(6, 2))
    with pytest.raises(ValueError, match=r"expected u \(4, r\)"):
        layer.set_factors(np.eye(5, 2), np.ones(2), np.eye(6, 2))
    layer.set_factors(np.eye(4, 2), np.ones(2), np.eye(6, 2))
    assert layer.rank == 2


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="strides are torch's")
def test_factors_are_stored_row_major_on_torch_through_dlrt_training():
    # Factors built by QR/SVD (column-major on torch) would keep that layout in their
    # variables and slow every elementwise update of U, S, V (see LowRankProjection's).
    model = keras.Sequential([keras.Input((12,)), DynamicLowRankDense(10, rank=3, max_rank=6),
                              keras.layers.Dense(3)])
    model.compile(DLRT(keras.optimizers.Adam(1e-3)), "mse")
    x = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
    model.fit(x, x[:, :3], epochs=3, batch_size=8, verbose=0)
    others = [DynamicLowRankConv2D(4, 3, rank=2), DynamicLowRankEinsumDense("ab,bc->ac", 5, rank=2)]
    others[0].build((None, 6, 6, 2))
    others[1].build((None, 7))
    for variable in model.layers[0].weights + others[0].weights + others[1].weights:
        assert variable.value.is_contiguous(), variable.path
