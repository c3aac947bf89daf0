"""The silent failures a new user hits first: each test fails without its fix.

Every public entry point fed what users feed it — optimizers Keras offers
(EMA, loss scaling), subclassed models, bad labels and values, numpy scalars,
NaN weights, existing output folders — must give a correct result or a clear
ValueError naming the argument. Runs on TensorFlow and JAX.
"""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import LowRankWarning, _files, callbacks, compression
from keras_lowrank.analysis import cka_map, class_selectivity, representation_ranks
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense, LowRankProjection
from keras_lowrank.optimizers import DLRT
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel, evaluate_robustness

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _data(n=96, features=16, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    w = rng.normal(size=(features, classes))
    return x, (x @ w).argmax(axis=1).astype("int32")


def _mlp(max_rank=8, rank=4, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,)),
        DynamicLowRankDense(32, max_rank=max_rank, rank=rank, activation="relu", name="hidden"),
        keras.layers.Dense(4, name="logits")])


# -- 2. EMA --------------------------------------------------------------------
def test_dlrt_with_ema_keeps_the_layers_and_averages_them():
    """EMA slots of S follow each basis change. With ema_momentum=0 the average
    is the variable itself, so training with and without EMA must end equal
    (the reset average used to be copied over S at the end: S = 0)."""
    x, y = _data()
    kernels = {}
    for use_ema in (False, True):
        model = _mlp()
        model.compile(DLRT(keras.optimizers.SGD(0.1, use_ema=use_ema, ema_momentum=0.0),
                           steps_per_cycle=3), LOSS)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 12 steps: 4 cycles
        kernels[use_ema] = _np(model.get_layer("hidden").kernel)
    scale = np.abs(kernels[False]).max()
    assert scale > 0.1
    # float32 rounding of A S Bᵀ vs the truncation's R diag(d) Rᵀ, a few cycles
    np.testing.assert_allclose(kernels[True], kernels[False], atol=1e-5 * scale)

    # a real average (momentum 0.9): a kernel of the trained size, not zero
    model = _mlp()
    model.compile(DLRT(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.9),
                       steps_per_cycle=3), LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    averaged = _np(model.get_layer("hidden").kernel)
    assert 0.5 < np.linalg.norm(averaged) / np.linalg.norm(kernels[False]) < 2.0


# -- 3. loss scaling -------------------------------------------------------------
def test_dlrt_refuses_a_loss_scale_optimizer_inside_and_works_inside_one():
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(DLRT"):
        DLRT(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    with pytest.raises(ValueError, match="inner_optimizer"):
        DLRT(None)
    x, y = _data()
    losses = {}
    for name, optimizer in (
        ("dlrt", DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=3)),
        ("scaled", keras.optimizers.LossScaleOptimizer(
            DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=3))),
    ):
        model = _mlp()
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


# -- 4. subclassed models -----------------------------------------------------------
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


# -- 5. labels and values --------------------------------------------------------------
def _classifier(classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(classes)])


def _unit_data(n=48, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 8)).astype("float32"), rng.integers(0, classes, n)


@pytest.mark.parametrize("bad", ["too_large", "negative", "fractional"])
def test_invalid_labels_raise_a_value_error_naming_y(bad):
    x, y = _unit_data()
    y = {"too_large": np.where(y == 0, 3, y), "negative": np.where(y == 0, -1, y),
         "fractional": y + 0.5}[bad]
    with pytest.raises(ValueError, match="`y`: .* label"):
        evaluate_robustness(_classifier(), (x, y), attacks=[FGSM(0.05)], large_eps=None)
    wrapper = PerturbedModel(_classifier(), PGD(0.05, steps=2))
    wrapper.compile(loss=LOSS, metrics=["accuracy"])
    with pytest.raises(ValueError, match="`y`: .* label"):
        wrapper.evaluate(x, y, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="`y`: .* label"):
        wrapper.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # the selectivity regularizer's wrapper too (a graph error on TF, numbers on JAX:
    # a loss of inf, or 0.5 truncated to class 0); the count is the batch's, as NumPy's
    from keras_lowrank import SelectivityRegularizedModel

    hidden = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                               keras.layers.Dense(3)])
    regularized = SelectivityRegularizedModel(hidden, alpha=1.0)
    regularized.compile("sgd", LOSS)
    first = int(np.sum((y[:16] < 0) | (y[:16] >= 3) | (y[:16] != np.round(y[:16]))))
    for run in (lambda: regularized.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False),
                lambda: regularized.evaluate(x, y, batch_size=16, verbose=0)):
        with pytest.raises(ValueError, match=f"`y`: {first} label"):
            run()
    valid = np.round(np.clip(y, 0, 2))
    assert np.isfinite(regularized.fit(x, valid, batch_size=16, epochs=1, verbose=0).history["loss"][0])


def test_one_output_models_are_refused():
    x, y = _unit_data()
    for head in (keras.layers.Dense(1), keras.layers.Dense(1, activation="sigmoid")):
        model = keras.Sequential([keras.Input((8,)), head])
        with pytest.raises(ValueError, match=r"classes ≥ 2"):
            evaluate_robustness(model, (x, y % 2), attacks=[FGSM(0.05)], large_eps=None)


def test_nan_and_integer_inputs_are_reported():
    x, y = _unit_data()
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="`x`: 1 input"):
        evaluate_robustness(_classifier(), (x_nan, y), attacks=[FGSM(0.05)], large_eps=None)
    wrapper = PerturbedModel(_classifier(), GaussianNoise(0.1, clip=None))
    wrapper.compile(loss=LOSS, metrics=["accuracy"])
    with pytest.raises(ValueError, match="NaN"):
        wrapper.evaluate(x_nan, y, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="divide by 255"):
        evaluate_robustness(_classifier(), ((x * 255).astype("uint8"), y),
                            attacks=[FGSM(0.05)], large_eps=None)
    with pytest.raises(ValueError, match="no examples"):
        evaluate_robustness(_classifier(), (x[:0], y[:0]), attacks=[FGSM(0.05)])


def test_one_hot_labels_and_array_pairs_give_the_sparse_result():
    x, y = _unit_data()
    model = _classifier()
    attacks = [FGSM(0.1), PGD(0.1, steps=3, random_start=False)]
    sparse = evaluate_robustness(model, (x, y), attacks=attacks, large_eps=None)
    onehot = evaluate_robustness(model, (x, np.eye(3, dtype="float32")[y]), attacks=attacks,
                                 large_eps=None)
    logits = _np(model(x))
    assert sparse.clean_accuracy == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-6)
    assert [r["accuracy"] for r in onehot.rows] == pytest.approx(
        [r["accuracy"] for r in sparse.rows], abs=1e-6)
    assert sparse.num_examples == len(x)


# -- 6. output folders -------------------------------------------------------------------
def test_export_never_mixes_or_loses_files(rng, tmp_path):
    model = compression.to_low_rank(_dense_mlp(), rank=4)
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        compression.export_compressed(model, str(out), formats="keras")
    assert os.listdir(out) == ["notes.txt"]
    # interrupted half way: the folder is as it was, no partial folder is left
    original = keras.Model.save

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    # overwrite replaces only what an export wrote: a folder with the user's files is refused
    with pytest.raises(FileExistsError, match="did not write \\(notes.txt\\)"):
        compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert os.listdir(out) == ["notes.txt"]
    out = tmp_path / "export2"
    compression.export_compressed(model, str(out), formats=("keras", "saved_model") if _has_tf() else "keras")
    keras.Model.save = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    finally:
        keras.Model.save = original
    assert sorted(os.listdir(tmp_path)) == ["export", "export2"]
    written = compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert sorted(os.listdir(out)) == [_files.MANIFEST, "model.keras"]  # replaced whole: no stale files
    # a file added to an exported folder makes it the user's again
    (out / "train.py").write_text("mine")
    with pytest.raises(FileExistsError, match="train.py"):
        compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert (out / "train.py").read_text() == "mine"
    x = rng.normal(size=(3, 16)).astype("float32")
    np.testing.assert_allclose(_np(keras.models.load_model(written["keras"])(x)), _np(model(x)),
                               atol=1e-5)


def test_a_symbolic_link_is_never_followed_or_replaced(tmp_path):
    model = compression.to_low_rank(_dense_mlp(), rank=4)
    target = tmp_path / "target"
    compression.export_compressed(model, str(target), formats="keras")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="symbolic link"):
            compression.export_compressed(model, str(tmp_path / "link"), formats="keras", overwrite=overwrite)
    assert os.path.islink(tmp_path / "link") and sorted(os.listdir(tmp_path)) == ["link", "target"]


def _has_tf():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "keras_lowrank", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_refuses_bad_arguments_before_training(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    done = _cli("demo", "--output", str(tmp_path))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    for args, message in ((["--projection-weight", "nan"], "projection-weight"),
                          (["--rank", "0"], "rank"), (["--sigmas", "inf"], "sigmas"),
                          (["--lr-loss", "l2"], "--lr-loss")):
        done = _cli("demo", "--output", str(tmp_path / "new"), *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert os.listdir(tmp_path) == ["old.json"]


# -- 7. arguments ---------------------------------------------------------------------
def test_numpy_scalars_are_accepted_and_non_finite_numbers_refused():
    layer = DynamicLowRankDense(np.int64(8), max_rank=np.int32(4), rank=np.int64(2),
                                tol=np.float32(0.1))
    assert (layer.units, layer.max_rank, layer.initial_rank) == (8, 4, 2)
    assert type(layer.units) is int
    assert PGD(np.float32(0.1), steps=np.int64(3)).steps == 3
    assert DLRT("sgd", steps_per_cycle=np.int64(5)).steps_per_cycle == 5
    assert LowRankProjection(rank=np.int64(4)).rank == 4
    assert LowRankProjection(rank=4, warmup_steps=np.int64(0)).warmup_steps == 0
    assert GaussianNoise(np.float64(0.2)).sigma == pytest.approx(0.2)
    # numpy seeds (Keras' SeedGenerator refused them: "Argument `seed` must be an integer"),
    # drawing what the Python int draws
    from keras_lowrank.robustness import SPSA, Corruption
    from keras_lowrank.robustness.attacks import APGD, AutoAttack, Square

    x = np.full((4, 8), 0.5, "float32")
    for make in (lambda s: GaussianNoise(0.1, seed=s), lambda s: Corruption("gaussian_noise", 3, seed=s)):
        np.testing.assert_array_equal(_np(make(np.int64(3))(None, x)), _np(make(3)(None, x)))
    for make in (PGD, SPSA, APGD, Square, AutoAttack):
        assert type(make(0.1, seed=np.int64(3)).seed) is int
    x, y = _unit_data()
    by_numpy = evaluate_robustness(_classifier(), (x, y), noise_sigmas=[0.2], seed=np.int64(3), large_eps=None)
    by_int = evaluate_robustness(_classifier(), (x, y), noise_sigmas=[0.2], seed=3, large_eps=None)
    assert by_numpy.rows == by_int.rows
    refused = [
        lambda: PGD(0.1, seed="a"),
        lambda: GaussianNoise(0.1, seed=1.5),
        lambda: evaluate_robustness(_classifier(), (x, y), large_eps=float("nan")),
        lambda: LowRankProjection(rank=4, projection_weight=float("nan")),
        lambda: LowRankProjection(rank=4, norm_weight=float("inf")),
        lambda: LowRankProjection(rank=4, warmup_steps=-1),
        lambda: LowRankProjection(rank=4, warmup_steps=2.5),
        lambda: DynamicLowRankDense(8, spectral_weight=float("nan")),
        lambda: DynamicLowRankDense(8, tol=float("nan")),
        lambda: PGD(float("nan")),
        lambda: FGSM(np.float32("inf")),
        lambda: GaussianNoise(float("nan")),
        lambda: FGSM(0.1, clip=(0.0, float("nan"))),
        lambda: DLRT("sgd", steps_per_cycle=2.5),
        lambda: DynamicLowRankDense(True),
        lambda: callbacks.SpectralConditioning(kappa=float("nan")),
    ]
    for make in refused:
        with pytest.raises(ValueError, match="must be"):
            make()


# -- 8. DLRT semantics ------------------------------------------------------------------------
def test_fit_ends_on_the_truncated_model(monkeypatch):
    """fit stops mid-cycle (8 steps, cycles of 3): DLRT finishes the cycle, so
    the layer holds the numpy tol-rule truncation of its augmented state."""
    x, y = _data(n=128)
    model = _mlp(max_rank=12, rank=3)
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
    x, y = _data()
    model = _mlp(max_rank=4, rank=4)
    model.compile(DLRT(keras.optimizers.SGD(0.01), steps_per_cycle=2), LOSS)
    model.get_layer("hidden").tol = 1e-6  # keeps every direction: saturated
    with pytest.warns(LowRankWarning, match="max_rank"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    roomy = _mlp(max_rank=8, rank=2)
    roomy.compile(DLRT(keras.optimizers.SGD(0.01), steps_per_cycle=2), LOSS)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*max_rank.*")
        roomy.fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_spectral_conditioning_waits_for_the_end_of_the_cycle():
    """Mid-cycle the augmented block has near-zero singular values; conditioning
    them lifts them to the mean, moving W by tens of percent and blocking the
    truncation. Each application must come at a cycle end, on the truncated S,
    where cond(S_r) ≤ κ afterwards."""
    x, y = _data(n=80)
    model = _mlp(max_rank=8, rank=2)
    model.compile(DLRT(keras.optimizers.SGD(0.05), steps_per_cycle=4), LOSS)
    applied = []

    class Recorded(callbacks.SpectralConditioning):
        def _apply(self):
            self._sync()
            layer = self.model.get_layer("hidden")
            before = _np(layer.kernel)
            super()._apply()
            change = np.linalg.norm(_np(layer.kernel) - before) / np.linalg.norm(before)
            applied.append((int(_np(self.model.optimizer.cycle_step)) % 4, change,
                            callbacks.condition_number(layer)))

    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[Recorded(kappa=2.0, frequency=3)])
    # 10 steps: due after steps 3, 6, 9 (mid-cycle), applied at 4, 8 and at the end
    assert len(applied) == 3
    for phase, change, cond in applied:
        assert phase == 0
        assert cond <= 2.0 + 1e-4
        assert change < 0.5  # mid-cycle: 0.7 seen


# -- 9. conversion never grows a model ------------------------------------------------------------
def _dense_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])


def test_to_low_rank_keeps_dense_where_the_rank_does_not_pay():
    model = _dense_mlp()  # random kernels: full spectra, tol 0.05 keeps nearly all
    with pytest.warns(LowRankWarning, match=r"(?s)left these layers dense.*converted no layer"):  # one warning
        converted = compression.to_low_rank(model, tol=0.05)
    assert converted.count_params() <= model.count_params()
    summary = compression.compression_summary(converted)
    assert summary.total["model_exported_params"] <= summary.total["model_dense_params"]
    assert {r["layer"] for r in summary.rows if r["rank"] is None} >= {
        model.layers[0].name, model.layers[1].name}
    small = compression.to_low_rank(model, rank=4)  # pays: 4·(16+32) < 16·32
    summary = compression.compression_summary(small)
    assert summary.total["model_exported_params"] == compression.compressed_model(
        small).count_params() < model.count_params()


# -- 10. the long tail ----------------------------------------------------------------------------------
def _relu_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(6, activation="relu", name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def test_analysis_entry_points_refuse_what_they_cannot_measure():
    x, y = _unit_data(n=40)
    model = _relu_model()
    with pytest.raises(ValueError, match="`layers` is empty"):
        cka_map(model, x, layers=[])
    with pytest.raises(ValueError, match="`layers` is empty"):
        representation_ranks(model, x, layers=[])
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    # refused as input, not left to the activations (a ReLU maps NaN to 0 on AVX-512's oneDNN)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        representation_ranks(model, x_nan)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        cka_map(model, x_nan)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        class_selectivity(model, (x_nan, y), layers=["h"])
    with pytest.raises(ValueError, match="at least 2"):
        representation_ranks(model, x[:1])
    with pytest.raises(ValueError, match="integer classes"):
        class_selectivity(model, (x, y + 0.7), layers=["h"])
    with pytest.raises(ValueError, match="one class"):
        class_selectivity(model, (x, np.zeros_like(y)), layers=["h"])
    # valid inputs still measure
    ranks = representation_ranks(model, x)
    assert all(r.variance_rank >= 1 for r in ranks.values())


# -- 17. one base class for what perturbs inputs ------------------------------------------------------------
def test_every_perturbation_shares_the_base_class_and_a_user_subclass_evaluates():
    from keras_lowrank.robustness import SPSA, Corruption, Perturbation

    for perturbation in (FGSM(0.1), PGD(0.1), SPSA(0.1), GaussianNoise(0.1),
                         Corruption("contrast", 3)):
        assert isinstance(perturbation, Perturbation)

    class Darken(Perturbation):
        clip = (0.0, 1.0)

        def perturb_in_graph(self, model, x, y=None):
            return x * 0.25

        def get_config(self):
            return {}

    x, y = _unit_data()
    model = _classifier()
    report = evaluate_robustness(model, (x, y), corruptions=[Darken()], large_eps=None)
    expected = np.mean(_np(model(x * 0.25)).argmax(1) == y)
    assert report.rows[-1]["accuracy"] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(_np(Darken()(model, x)), x * 0.25)
    with pytest.raises(ValueError, match="Perturbation"):
        PerturbedModel(model, object())


# -- 18. attacks called directly, and the report's arguments -----------------------------------------------
def test_attacks_called_directly_refuse_nan_and_infinite_inputs():
    """``attack(model, x, y)`` on a batch holding NaN or ±∞ returned NaN "adversarial
    examples" without a word (the report and PerturbedModel caught it, the direct call
    did not), also with clip=None; the error counts the examples, as NumPy does."""
    from keras_lowrank.robustness import APGD, FAB, SPSA, AutoAttack, Square

    x, y = _unit_data(n=12, classes=5)
    model = _classifier(classes=5)
    bad = x.copy()
    bad[2, 3], bad[7, 0], bad[7, 5] = np.nan, np.inf, -np.inf
    assert (~np.isfinite(bad)).any(axis=1).sum() == 2
    attacks = [FGSM(0.1), PGD(0.1, steps=2), PGD(0.1, steps=2, clip=None), SPSA(0.1, steps=1),
               APGD(0.1, steps=2), Square(0.1, steps=2), FAB(0.1, steps=2),
               GaussianNoise(0.1), GaussianNoise(0.1, clip=None)]
    for attack in attacks:
        with pytest.raises(ValueError, match=r"`x`: 2 input\(s\) hold NaN or infinite"):
            attack(model, bad, y)
        assert np.isfinite(_np(attack(model, x, y))).all(), attack  # clean data still runs
    for call in (lambda: AutoAttack(0.1, steps=2, square_steps=2).run(model, bad, y),
                 lambda: evaluate_robustness(model, (bad, y), attacks=[AutoAttack(0.1, steps=2, square_steps=2)],
                                             large_eps=None)):
        with pytest.raises(ValueError, match=r"`x`: 2 input\(s\) hold NaN or infinite"):
            call()


def test_autoattack_on_fewer_than_four_classes_names_the_stages_that_apply():
    x, y = _unit_data(n=8, classes=3)
    from keras_lowrank.robustness import APGD, AutoAttack, Square

    for version in ("standard", "fast"):
        with pytest.raises(ValueError, match=rf"AutoAttack \({version}\) needs a model of at least 4 classes"
                                             r".*has 3.*Square"):
            AutoAttack(0.1, version=version).run(_classifier(classes=3), x, y)
    # "rand" (APGD-CE, APGD-DLR) runs on 3 classes, not on 2
    AutoAttack(0.1, version="rand", steps=2).run(_classifier(classes=3), x, y)
    with pytest.raises(ValueError, match=r"AutoAttack \(rand\) needs a model of at least 3 classes.*has 2"):
        AutoAttack(0.1, version="rand", steps=2).run(_classifier(classes=2), *_unit_data(n=8, classes=2))
    # what the message proposes runs on that model
    report = evaluate_robustness(_classifier(classes=3), (x, y), large_eps=None,
                                 attacks=[APGD(0.1, loss="ce", steps=2), Square(0.1, steps=2)])
    assert [r["family"] for r in report.rows] == ["clean", "APGD", "Square"]


def test_one_example_without_its_batch_axis_is_named():
    x, y = _unit_data(n=4)
    with pytest.raises(ValueError, match=r"`x` must be a batch.*\(None, 8\); got shape \(8,\).*x\[None\]"):
        PGD(0.1, steps=2)(_classifier(), x[0], y[:1])
    assert _np(PGD(0.1, steps=2)(_classifier(), x[:1], y[:1])).shape == (1, 8)


def test_report_arguments_given_alone_or_malformed():
    """One attack, corruption or σ given alone is a list of one (it raised a TypeError
    from deep inside); a bad ``clip`` is refused even when no row uses it; a tuple of
    three arrays (x, y, weights) is named instead of failing on an attribute."""
    from keras_lowrank.robustness import Corruption

    x, y = _unit_data()
    model = _classifier()
    listed = evaluate_robustness(model, (x, y), attacks=[FGSM(0.05)], noise_sigmas=[0.1],
                                 corruptions=[Corruption("contrast", 2)], large_eps=None)
    for sigma in (0.1, np.float32(0.1), np.array(0.1), (s for s in [0.1])):
        alone = evaluate_robustness(model, (x, y), attacks=FGSM(0.05), noise_sigmas=sigma,
                                    corruptions=Corruption("contrast", 2), large_eps=None)
        assert [(r["name"], r["accuracy"]) for r in alone.rows] == [(r["name"], r["accuracy"]) for r in listed.rows]
    with pytest.raises(ValueError, match=r"`clip` must be None or \(low, high\) with low < high"):
        evaluate_robustness(model, (x, y), clip=(1.0, 0.0), large_eps=None)
    with pytest.raises(ValueError, match=r"`data` is a tuple of 3 arrays; pass an \(x, y\) pair"):
        evaluate_robustness(model, (x, y, np.ones(len(x))), attacks=[FGSM(0.05)], large_eps=None)


# -- a flag the model contradicts -------------------------------------------------------
class _SoftmaxByOps(keras.layers.Layer):
    """A softmax no structural check recognises."""

    def call(self, x):
        return ops.softmax(x)


def test_from_logits_that_the_model_contradicts_is_refused_everywhere(rng):
    from keras_lowrank.robustness import APGD, FAB, AutoAttack, Square

    x = rng.uniform(size=(24, 6)).astype("float32")
    y = rng.integers(0, 4, size=24)
    body = [keras.Input((6,)), keras.layers.Dense(16, activation="relu")]
    softmax = keras.Sequential(body + [keras.layers.Dense(4, activation="softmax")])
    hidden = keras.Sequential(body + [keras.layers.Dense(4), _SoftmaxByOps()])
    logits = keras.Sequential(body + [keras.layers.Dense(4)])
    wrong = [(FAB(0.1, steps=5, from_logits=True), softmax), (PGD(0.1, from_logits=True), hidden),
             (Square(0.1, steps=5, from_logits=True), hidden), (APGD(0.1, steps=5, from_logits=False), logits),
             (FGSM(0.1, from_logits=False), logits)]
    for attack, model in wrong:
        with pytest.raises(ValueError, match="from_logits"):
            attack(model, x, y)
        with pytest.raises(ValueError, match="from_logits"):
            evaluate_robustness(model, (x, y), attacks=[attack], large_eps=None)
    with pytest.raises(ValueError, match="from_logits=True"):
        AutoAttack(0.1, version="fast", steps=5, from_logits=True).run(hidden, x, y)
    with pytest.raises(ValueError, match="from_logits"):
        evaluate_robustness(softmax, (x, y), attacks=[PGD(0.1)], from_logits=True, large_eps=None)
    # the flags that agree with the model run
    PGD(0.1, from_logits=False)(hidden, x, y)
    FAB(0.1, steps=5)(softmax, x, y)
    evaluate_robustness(logits, (x, y), attacks=[PGD(0.1, from_logits=True)], large_eps=None)


# -- what was asked is done, or refused --------------------------------------------------
def test_targeted_is_refused_where_it_cannot_be_honoured_and_a_left_out_stage_is_named(rng):
    from keras_lowrank.robustness import FAB, AutoAttack, Square

    for make in (lambda: Square(0.1, targeted=True), lambda: FAB(0.1, targeted=True),
                 lambda: AutoAttack(0.1, targeted=True)):
        with pytest.raises(ValueError, match="targeted=True"):
            make()
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    # L2 Square needs images: on (n, features) data the ensemble runs without it, and says so
    attack = AutoAttack(0.5, norm=2, steps=5, square_steps=5)
    result = attack.run(model, x, y)
    assert [s.split(":")[0].split("-")[0] for s in result.flags["skipped"]] == ["Square"]
    assert "Square" not in " ".join(result.stage_accuracy)
    report = evaluate_robustness(model, (x, y), attacks=[attack], large_eps=None)
    assert " without Square" in report.rows[1]["name"], report.rows[1]["name"]


def test_a_perturbed_model_is_not_evaluated_as_a_model(rng):
    """Its gradient is stopped: every attack on it read as the clean accuracy."""
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    wrapped = PerturbedModel(model, GaussianNoise(0.1))
    with pytest.raises(ValueError, match="PerturbedModel.*`.model`"):
        evaluate_robustness(wrapped, (x, y), attacks=[FGSM(0.1)])
    with pytest.raises(ValueError, match="PerturbedModel"):
        PGD(0.1)(wrapped, x, y)


# -- calls that would do nothing say so ----------------------------------------------------
def test_calls_that_would_do_nothing_say_so(rng):
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    dense = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.warns(LowRankWarning, match="converted no layer"):
        compression.to_low_rank(dense, rank=2)
    for callback in (callbacks.RankTruncation(), callbacks.SpectralConditioning(), callbacks.LowRankMonitor()):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        model.compile("sgd", "mse")
        with pytest.warns(LowRankWarning, match=f"{type(callback).__name__} acts on dynamic low-rank layers"):
            model.fit(x, keras.utils.to_categorical(y, 3), epochs=1, verbose=0, callbacks=[callback])
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(DLRT(keras.optimizers.Adam()), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(LowRankWarning, match="DLRT was given a model without dynamic low-rank layers"):
        model.fit(x, y, epochs=1, verbose=0)


def test_a_report_refuses_an_endless_dataset(rng):
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])

    class Endless(keras.utils.PyDataset):
        def __getitem__(self, index):
            return x, y

        @property
        def num_batches(self):
            return None

    with pytest.raises(ValueError, match="endless"):
        evaluate_robustness(model, Endless(), attacks=[FGSM(0.1)], large_eps=None)
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(ValueError, match="endless"):
        evaluate_robustness(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(),
                            attacks=[FGSM(0.1)], large_eps=None)


def test_a_dataset_of_another_shape_is_refused_before_any_trace_and_the_model_still_works(rng):
    x = rng.uniform(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    before = _np(model.predict(x, verbose=0))
    with pytest.raises(ValueError, match=r"datasets\['bad'\].*\(5,\).*\(6,\)"):
        evaluate_robustness(model, (x, y), attacks=[FGSM(0.1)], large_eps=None,
                            datasets={"bad": (x[:, :5], y)})
    np.testing.assert_array_equal(_np(model.predict(x, verbose=0)), before)  # on JAX it raised before


# -- the remaining obscure outcomes, each a clear error naming the fix --------------------
def _two_outputs():
    inputs = keras.Input((6,))
    return keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)])


def _lstm_with_state():
    inputs = keras.Input((6, 1))
    out, h, c = keras.layers.LSTM(3, return_state=True)(inputs)
    return keras.Model(inputs, [out, h, c])


def _built_lr():
    layer = LowRankProjection(2)
    layer.build((None, 6))
    return layer


def _nan_kernel_model():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu", name="h"),
                              keras.layers.Dense(3)])
    model.get_layer("h").kernel.assign(np.full((6, 16), np.nan, "float32"))
    return model


_X = np.random.default_rng(0).uniform(size=(16, 6)).astype("float32")
_Y = np.arange(16) % 3


def _three():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


@pytest.mark.parametrize("case, call, message", [
    ("two outputs, attack", lambda: FGSM(0.1)(_two_outputs(), _X, _Y), "2 outputs"),
    ("two outputs, report", lambda: evaluate_robustness(_two_outputs(), (_X, _Y), attacks=[FGSM(0.1)]), "2 outputs"),
    ("LSTM return_state", lambda: FGSM(0.1)(_lstm_with_state(), _X[..., None], _Y), "3 outputs"),
    ("string labels", lambda: evaluate_robustness(_three(), (_X, _Y.astype(str)), attacks=[FGSM(0.1)]), "dtype <U"),
    ("string labels, attack", lambda: FGSM(0.1)(_three(), _X, _Y.astype(str)), "dtype <U"),
    ("one-hot width", lambda: evaluate_robustness(_three(), (_X, np.eye(5)[_Y]), attacks=[FGSM(0.1)]), "width 5"),
    ("(x, None)", lambda: evaluate_robustness(_three(), (_X, None), attacks=[FGSM(0.1)]), r"\(x, None\)"),
    ("seed -1", lambda: PGD(0.1, seed=-1), "`seed`"),
    ("encode before build", lambda: LowRankProjection(2).encode(_X), "not built"),
    ("encode width", lambda: _built_lr().encode(_X[:, :5]), "built for 6 features"),
    ("decode width", lambda: _built_lr().decode(_X[:, :5]), r"shape \(n, 2\)"),
    ("unbuilt model", lambda: compression.to_low_rank(keras.Sequential([keras.layers.Dense(4)]), rank=2),
     "not built"),
    ("NaN kernel", lambda: compression.to_low_rank(_nan_kernel_model(), rank=2), "NaN or ±inf in its kernel"),
    ("NaN CKA", lambda: cka_map(_nan_kernel_model(), _X), "NaN or ±inf weights"),
])
def test_obscure_inputs_get_clear_errors(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_python_lists_in_a_report_score_as_arrays():
    model = _three()
    as_lists = evaluate_robustness(model, (_X.tolist(), _Y.tolist()), noise_sigmas=[0.0], large_eps=None)
    as_arrays = evaluate_robustness(model, (_X, _Y), noise_sigmas=[0.0], large_eps=None)
    assert as_lists.clean_accuracy == as_arrays.clean_accuracy


def test_damaged_exported_files_are_named(tmp_path):
    from keras_lowrank.cli.common import JobError, load_model

    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(JobError, match="not a readable .keras file"):
        load_model(str(tmp_path / "model.keras"))
    if keras.backend.backend() == "tensorflow":
        from keras_lowrank.robustness.exported import load_exported

        (tmp_path / "model.tflite").write_bytes(b"x" * 64)
        with pytest.raises(ValueError, match="not a TFLite model"):
            load_exported(str(tmp_path / "model.tflite"))


# -- factors never go non-finite without a skipped step ------------------------------------
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
