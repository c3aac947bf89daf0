"""The DLRT optimizer wrapper (keras_lowrank/optimizers.py) with what Keras' optimizers
offer: EMA, loss scaling, gradient accumulation, the end of fit mid-cycle, a layer at its
max_rank, a step that would make S non-finite, optimizers that cannot carry factors.
(The float64 reference of the integrator: test_dlrt_training.py.)"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops
from models import low_rank_mlp, separable_data

from keras_lowrank import LowRankWarning, callbacks
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.optimizers import DLRT

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_dlrt_with_ema_keeps_the_layers_and_averages_them():
    """EMA slots of S follow each basis change. With ema_momentum=0 the average
    is the variable itself, so training with and without EMA must end equal
    (the reset average used to be copied over S at the end: S = 0)."""
    x, y = separable_data()
    kernels = {}
    for use_ema in (False, True):
        model = low_rank_mlp()
        model.compile(DLRT(keras.optimizers.SGD(0.1, use_ema=use_ema, ema_momentum=0.0),
                           steps_per_cycle=3), LOSS)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 12 steps: 4 cycles
        kernels[use_ema] = _np(model.get_layer("hidden").kernel)
    scale = np.abs(kernels[False]).max()
    assert scale > 0.1
    # float32 rounding of A S Bᵀ vs the truncation's R diag(d) Rᵀ, a few cycles
    np.testing.assert_allclose(kernels[True], kernels[False], atol=1e-5 * scale)

    # a real average (momentum 0.9): a kernel of the trained size, not zero
    model = low_rank_mlp()
    model.compile(DLRT(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9),
                       steps_per_cycle=3), LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    averaged = _np(model.get_layer("hidden").kernel)
    assert 0.5 < np.linalg.norm(averaged) / np.linalg.norm(kernels[False]) < 2.0


def test_dlrt_refuses_a_loss_scale_optimizer_inside_and_works_inside_one():
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(DLRT"):
        DLRT(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    with pytest.raises(ValueError, match="inner_optimizer"):
        DLRT(None)
    x, y = separable_data()
    losses = {}
    for name, optimizer in (
        ("dlrt", DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=3)),
        ("scaled", keras.optimizers.LossScaleOptimizer(
            DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=3))),
    ):
        model = low_rank_mlp()
        model.compile(optimizer, LOSS)
        losses[name] = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    # it trains (1.45 → 1.27 seen on TensorFlow, 1.38 → 1.29 on torch: other initial weights)
    assert losses["dlrt"][-1] < 0.95 * losses["dlrt"][0]
    # loss scaling by a power of two is exact in float32: the same steps
    np.testing.assert_allclose(losses["scaled"], losses["dlrt"], rtol=1e-4)


def test_dlrt_refuses_inner_loss_scale_factor_and_gradient_accumulation():
    """Both trained without a word before and differently from what they stand for:
    an inner ``loss_scale_factor`` (Keras scales the loss through DLRT, the inner
    optimizer divided unscaled S gradients by 1024: weights 0.43 off after 12 steps) and
    ``gradient_accumulation_steps`` (S stepped every 2 batches, the integrator on each:
    0.07 off the doubled batch that plain Keras equals to 3e-8)."""
    with pytest.raises(ValueError, match=r"loss_scale_factor=1024.0.*LossScaleOptimizer\(DLRT"):
        DLRT(keras.optimizers.SGD(0.1, loss_scale_factor=1024.0))
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2.*larger batch_size"):
        DLRT(keras.optimizers.Adam(gradient_accumulation_steps=2))
    for fine in (keras.optimizers.SGD(0.1, clipnorm=1.0), keras.optimizers.AdamW(weight_decay=0.1),
                 keras.optimizers.SGD(0.1, global_clipnorm=1.0)):
        DLRT(fine)


def test_fit_ends_on_the_truncated_model(monkeypatch):
    """fit stops mid-cycle (8 steps, cycles of 3): DLRT finishes the cycle, so
    the layer holds the numpy tol-rule truncation of its augmented state."""
    x, y = separable_data(n=128)
    model = low_rank_mlp(max_rank=12, rank=3)
    optimizer = DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3)
    model.compile(optimizer, LOSS)
    captured = {}
    finish = DLRT.finish_cycle

    def spy(self):
        layer = model.get_layer("hidden")
        captured.update(u=_np(layer.u), s=_np(layer.s), v=_np(layer.v), step=_np(self.cycle_step))
        return finish(self)

    monkeypatch.setattr(DLRT, "finish_cycle", spy)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(captured["step"]) % 3 != 0  # it did stop mid-cycle
    assert int(_np(optimizer.cycle_step)) % 3 == 0
    layer = model.get_layer("hidden")
    r = int(np.count_nonzero(np.any(captured["u"] != 0, axis=0)))
    p, d, qt = np.linalg.svd(captured["s"][:r, :r].astype(np.float64))
    tails = np.sqrt(np.cumsum((d ** 2)[::-1])[::-1])
    expected_rank = max(1, int(np.sum(tails >= layer.tol * np.linalg.norm(d))))
    assert r > expected_rank  # augmented: truncation had work to do
    assert layer.rank == expected_rank
    k = expected_rank
    w = (captured["u"][:, :r] @ p[:, :k]) * d[:k] @ (qt[:k] @ captured["v"][:, :r].T)
    np.testing.assert_allclose(_np(layer.kernel), w, atol=1e-5 * np.abs(w).max())


def test_a_layer_at_max_rank_is_reported():
    x, y = separable_data()
    model = low_rank_mlp(max_rank=4, rank=4)
    model.compile(DLRT(keras.optimizers.SGD(0.01), steps_per_cycle=2), LOSS)
    model.get_layer("hidden").tol = 1e-6  # keeps every direction: saturated
    with pytest.warns(LowRankWarning, match="max_rank"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    roomy = low_rank_mlp(max_rank=8, rank=2)
    roomy.compile(DLRT(keras.optimizers.SGD(0.01), steps_per_cycle=2), LOSS)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*max_rank.*")
        roomy.fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_an_inner_step_that_makes_s_non_finite_is_skipped_and_counted(rng):
    x = rng.normal(size=(64, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((16,)), DynamicLowRankDense(32, max_rank=8, rank=4, activation="relu",
                                                                      name="lr"), keras.layers.Dense(2)])
    # an inner step that turns S non-finite from finite gradients (∞ · g, and ∞ · 0 = NaN)
    model.compile(DLRT(keras.optimizers.SGD(float("inf")), steps_per_cycle=3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [_np(w).copy() for w in model.weights]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert int(_np(model.optimizer.skipped_steps)) == 8  # every step skipped, none half-applied
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(_np(new), old)


def test_optimizers_that_break_low_rank_factors_are_refused_up_front(rng):
    with pytest.raises(ValueError, match="DLRT cannot wrap Ftrl"):
        DLRT(keras.optimizers.Ftrl())
    x = rng.normal(size=(32, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((16,)), DynamicLowRankDense(32, max_rank=8, rank=4), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adafactor(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="plain Adafactor"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.RankTruncation()])


@pytest.mark.parametrize("mode", ["host", None])
def test_the_step_tests_finiteness_in_one_reduction_whatever_the_layer_count(monkeypatch, mode):
    """The gradients' and the S factors' finiteness are each one reduction over all of
    them: a reduction per tensor, stacked, became a chain of scalar ANDs that XLA copied
    into every guarded update (DenseNet121's first DLRT call on JAX 94.8 → 48.4 s when the
    S test became one). Truth: the step's program holds as many reductions for 2 layers
    as for 6 (JAX: its jaxpr)."""
    if keras.backend.backend() != "jax":
        pytest.skip("counts the equations of a JAX program")
    import jax

    from keras_lowrank import optimizers

    monkeypatch.setattr(optimizers, "_integrator_mode", lambda _layer_count: mode)

    def reductions(layer_count):
        model = keras.Sequential([keras.Input((8,))] + [DynamicLowRankDense(8, max_rank=4, rank=2)
                                                        for _ in range(layer_count)])
        optimizer = DLRT(keras.optimizers.Adam(1e-3))
        variables = model.trainable_variables
        optimizer.build(variables)
        jaxpr = jax.make_jaxpr(optimizer.stateless_apply)(
            [v.value for v in optimizer.variables], [v.value for v in variables], [v.value for v in variables])
        return sum(equation.primitive.name == "reduce_and" for equation in jaxpr.jaxpr.eqns)

    assert reductions(2) == reductions(6) > 0


@pytest.mark.parametrize("augmenting", [True, False])
def test_the_host_callback_hands_each_layer_its_own_arrays(rng, augmenting):
    """``_integrate_on_host`` (on JAX) packs its inputs into one flat array per dtype and
    the callback unpacks them: each layer must get back exactly its own arrays. Truth:
    ``host_factorization`` called on each layer's arrays, cast to its dtype (the same
    float64 arithmetic on the same values: equal bit for bit). Layers of two dtypes and
    shapes, interleaved, with one and two slots."""
    from types import SimpleNamespace

    from keras_lowrank import optimizers
    from keras_lowrank._low_rank import host_factorization as host

    layers, truth = [], []
    for n, m, r_max, rank, dtype, kinds in ((12, 9, 6, 2, "float32", ["linear", "square"]),
                                             (7, 10, 4, 3, "float16", ["square"]),
                                             (12, 9, 6, 3, "float32", ["linear"])):
        u, v = np.zeros((n, r_max)), np.zeros((m, r_max))
        u[:, :rank], v[:, :rank] = (np.linalg.qr(rng.normal(size=(k, rank)))[0] for k in (n, m))
        s0 = np.pad(rng.normal(size=(rank, rank)), [(0, r_max - rank)] * 2)
        s_now = s0 + 0.1 * np.pad(rng.normal(size=(rank, rank)), [(0, r_max - rank)] * 2)
        grads = [rng.normal(size=t.shape) for t in (u, v)]
        moments = [np.abs(rng.normal(size=(r_max, r_max))) for _ in kinds]
        arrays = [a.astype(dtype) for a in (*grads, u, s0, s_now, v, *moments)]
        layer = SimpleNamespace(max_rank=r_max, tol=0.3, min_rank=1)
        tensors = [ops.convert_to_tensor(a) for a in arrays]
        layers.append((layer, *tensors[:6], tensors[6:], kinds))
        gu, gv, u, s0, s_now, v, *moments = arrays
        new = (host.augment(u, s0, v, gu, gv, r_max) if augmenting
               else host.truncate(u, s_now, v, layer.tol, layer.min_rank))
        a, b = host.basis_change(u, v, new[0], new[2])
        truth += [t.astype(dtype) for t in (*new, *(host.carry_slot(x, a, b, kind)
                                                    for x, kind in zip(moments, kinds)))]
    got = optimizers._integrate_on_host(layers, ops.convert_to_tensor(augmenting))
    assert len(got) == len(truth)
    for mine, want in zip(got, truth):
        assert keras.backend.standardize_dtype(mine.dtype) == str(want.dtype)
        np.testing.assert_array_equal(_np(mine), want)
