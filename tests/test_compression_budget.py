"""Data-aware factorisation and ranks for a budget (keras_lowrank.compression's
calibration and allocation), against truths computed another way: the best rank-r
kernel for the data from a QR of the data instead of its second moment, the layers'
own outputs for the rows their kernels multiply, a brute-force rank allocation."""

import itertools
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import compression
from keras_lowrank.compression._common import _kernel_matrix
from keras_lowrank.compression.allocation import allocate_ranks
from keras_lowrank.compression.calibration import rows_of, second_moments, whitened_svd

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _anisotropic(rng, n=400, n_in=24, scale=30.0):
    """Inputs whose few directions carry most of the energy: there the kernel that
    keeps the outputs and the kernel that keeps the weights differ."""
    basis, _ = np.linalg.qr(rng.normal(size=(n_in, n_in)))
    return rng.normal(size=(n, n_in)) * np.geomspace(scale, 1 / scale, n_in) @ basis.T


def test_whitened_svd_is_the_best_rank_r_kernel_for_the_data(rng):
    x = _anisotropic(rng)
    w = rng.normal(size=(24, 16))
    factor, sigma = whitened_svd(w, x.T @ x / len(x), damping=0.0)
    # reference: X = Q R, so ‖X(W − Ŵ)‖ = ‖R(W − Ŵ)‖ and Ŵ = R⁻¹ · best rank-r of R W
    _, r_x = np.linalg.qr(x)
    p, d, qt = np.linalg.svd(r_x @ w)
    for r in (1, 4, 9):
        u, s, v = factor(r)
        np.testing.assert_allclose(u.T @ u, np.eye(r), atol=1e-10)
        np.testing.assert_allclose(v.T @ v, np.eye(r), atol=1e-10)
        reference = np.linalg.solve(r_x, (p[:, :r] * d[:r]) @ qt[:r])
        np.testing.assert_allclose(x @ (u * s) @ v.T, x @ reference, rtol=1e-9, atol=1e-9 * np.abs(x @ w).max())
        # the spectrum is the output error: Σ_{k>r} σ² = mean ‖x(W − W_r)‖²
        error = np.mean(np.sum((x @ (w - (u * s) @ v.T)) ** 2, axis=1))
        np.testing.assert_allclose(error, np.sum(sigma[r:] ** 2), rtol=1e-9)


def test_data_aware_keeps_outputs_where_plain_svd_keeps_weights(rng):
    x = _anisotropic(rng)
    w = rng.normal(size=(24, 16))
    factor, _ = whitened_svd(w, x.T @ x / len(x))
    u, d, vt = np.linalg.svd(w)
    for r in (2, 5):
        u_a, s_a, v_a = factor(r)
        aware, plain = (u_a * s_a) @ v_a.T, (u[:, :r] * d[:r]) @ vt[:r]
        assert np.linalg.norm(x @ (w - aware)) < 0.7 * np.linalg.norm(x @ (w - plain))  # outputs
        assert np.linalg.norm(w - aware) > np.linalg.norm(w - plain)  # but not the weights


def test_rank_deficient_calibration_stays_finite_and_no_worse(rng):
    x = _anisotropic(rng, n=10)  # 10 examples of 24 features: C has rank 10
    w = rng.normal(size=(24, 16))
    factor, sigma = whitened_svd(w, x.T @ x / len(x))
    u, s, v = factor(6)
    assert np.all(np.isfinite(sigma)) and np.all(np.isfinite(u)) and np.all(np.isfinite(v))
    uw, d, vt = np.linalg.svd(w)
    plain = (uw[:, :6] * d[:6]) @ vt[:6]
    assert np.linalg.norm(x @ (w - (u * s) @ v.T)) <= np.linalg.norm(x @ (w - plain)) * (1 + 1e-6)


@pytest.mark.parametrize("kind", ["dense_on_maps", "conv2d_same_strided", "conv1d_dilated", "einsum"])
def test_rows_are_what_the_kernel_multiplies(rng, kind):
    """rows · W (the kernel as a matrix) is the layer's output without its bias."""
    shapes = {"dense_on_maps": (3, 5, 4), "conv2d_same_strided": (7, 6, 3), "conv1d_dilated": (11, 3),
              "einsum": (5, 6)}
    layer = {"dense_on_maps": keras.layers.Dense(7, use_bias=False),
             "conv2d_same_strided": keras.layers.Conv2D(5, 3, strides=2, padding="same", use_bias=False),
             "conv1d_dilated": keras.layers.Conv1D(4, 3, dilation_rate=2, use_bias=False),
             "einsum": keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4))}[kind]
    x = rng.normal(size=(2,) + shapes[kind]).astype("float32")
    out = _np(layer(x))
    rows = rows_of(layer, x)
    matrix = _kernel_matrix(layer)
    np.testing.assert_allclose((rows @ matrix).reshape(out.shape), out, rtol=1e-5, atol=1e-5)


def test_second_moments_come_from_each_layers_own_inputs(rng):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="b")(h))
    x = rng.normal(size=(50, 6)).astype("float32")
    moments = second_moments(model, [model.get_layer("a"), model.get_layer("b")], x, examples=40)
    hidden = _np(keras.Model(inputs, h)(x[:40])).astype("float64")
    np.testing.assert_allclose(moments[id(model.get_layer("a"))], x[:40].T.astype("float64") @ x[:40] / 40,
                               rtol=1e-6)
    np.testing.assert_allclose(moments[id(model.get_layer("b"))], hidden.T @ hidden / 40, rtol=1e-5, atol=1e-7)


def test_greedy_allocation_is_the_brute_force_optimum_at_equal_costs(rng):
    spectra = [np.sort(rng.uniform(0.1, 3, size=n))[::-1] for n in (5, 6, 4)]
    costs, limits, budget = [10, 10, 10], [5, 6, 4], 90
    ranks = allocate_ranks(spectra, costs, limits, budget, min_rank=1)

    def kept(rs):
        return sum(np.sum(s[:r] ** 2) / np.sum(s ** 2) for s, r in zip(spectra, rs))

    best = max((rs for rs in itertools.product(*(range(1, m + 1) for m in limits))
                if sum(r * c for r, c in zip(rs, costs)) <= budget), key=kept)
    assert sum(r * c for r, c in zip(ranks, costs)) <= budget
    assert kept(ranks) == pytest.approx(kept(best), rel=1e-12)


def test_allocation_fills_the_budget_to_within_one_rank_step(rng):
    spectra = [np.sort(rng.uniform(0.1, 3, size=n))[::-1] for n in (20, 30, 12)]
    costs, limits = [40, 70, 25], [19, 29, 11]
    ranks = allocate_ranks(spectra, costs, limits, 1000)
    spent = sum(r * c for r, c in zip(ranks, costs))
    open_costs = [c for r, c, m in zip(ranks, costs, limits) if r < m]
    assert spent <= 1000 and (not open_costs or 1000 - spent < min(open_costs))
    with pytest.raises(ValueError, match="budget"):
        allocate_ranks(spectra, costs, limits, 50)


def _trained_mlp(rng):
    x = _anisotropic(rng, n=300, n_in=32).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int32") + (x[:, 3] > 0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)
    return model, x


@pytest.mark.parametrize("budget_of", ["params", "macs"])
def test_a_budget_is_met_and_never_exceeded(rng, budget_of):
    model, x = _trained_mlp(rng)
    for budget in (0.5, 0.25, 0.1):
        low = compression.to_low_rank(model, budget=budget, budget_of=budget_of)
        summary = compression.compression_summary(low)
        rows = [r for r in summary.rows if r["rank"] is not None]
        kernels = sum(r["n_in"] * r["n_out"] for r in rows)
        factors = sum(r["rank"] * (r["n_in"] + r["n_out"]) for r in rows)
        assert factors <= budget * kernels
        assert budget * kernels - factors < max(r["n_in"] + r["n_out"] for r in rows)  # one rank step
        assert summary.total["model_exported_params"] <= model.count_params()  # what is exported


def test_data_aware_conversion_keeps_the_outputs_closer(rng):
    model, x = _trained_mlp(rng)
    outputs = _np(model(x))
    plain = compression.to_low_rank(model, rank=3)
    aware = compression.to_low_rank(model, rank=3, data=x, calibration_examples=200)
    assert np.linalg.norm(_np(aware(x)) - outputs) < np.linalg.norm(_np(plain(x)) - outputs)


def test_budget_arguments_are_checked(rng):
    model, _ = _trained_mlp(rng)
    with pytest.raises(ValueError, match="`rank` or `budget`"):
        compression.to_low_rank(model, rank=2, budget=0.5)
    with pytest.raises(ValueError, match="`budget`"):
        compression.to_low_rank(model, budget=0.0)
    with pytest.raises(ValueError, match="`budget_of`"):
        compression.to_low_rank(model, budget=0.5, budget_of="flops")
    with pytest.raises(ValueError, match="budget"):
        compression.to_low_rank(model, budget=1e-4)


def test_dlrt_after_a_budget_adapts_the_bases_and_keeps_the_budget(rng):
    """Each layer is held at its allocated rank: DLRT augments (the bases move: not only
    S trains) and truncates back every cycle, so after fine-tuning every rank is the
    allocated one and the budget holds."""
    from keras_lowrank import DLRT

    model, x = _trained_mlp(rng)
    y = (x[:, :3].sum(axis=1) > 0).astype("int32") + (x[:, 3] > 0)
    low = compression.to_low_rank(model, budget=0.25, data=x)
    layers = [l for l in low.layers if hasattr(l, "factors")]
    allocated = {l.name: l.rank for l in layers}
    bases = {l.name: l.factors()[0].copy() for l in layers}
    low.compile(DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low.fit(x, y, epochs=2, batch_size=30, verbose=0)  # 20 steps: ends inside a cycle
    assert not [w for w in caught if "ended training at their max_rank" in str(w.message)]
    compression.truncate_ranks(low)
    assert {l.name: l.rank for l in layers} == allocated
    for layer in layers:  # span(U) moved: the largest principal angle is not ~0
        u, old = layer.factors()[0], bases[layer.name]
        cosines = np.linalg.svd(old.T @ u, compute_uv=False)
        assert cosines.min() < 1 - 1e-3, layer.name
