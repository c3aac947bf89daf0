"""DLRT inside compile/fit: invariants, rank adaptation, NaN guard, save/resume."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import LowRankWarning
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense
from keras_lowrank.optimizers import DLRT

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def _linear_problem(rng, rank, n=1280, dim=64):
    x = rng.normal(size=(n, dim)).astype("float32")
    a = rng.normal(size=(dim, rank)) @ rng.normal(size=(rank, dim)) / np.sqrt(dim * rank)
    return x, (x @ a).astype("float32")


def _check_invariants(layer):
    u, s, v = layer.factors()
    r = layer.rank
    assert layer.min_rank <= r <= layer.max_rank
    assert np.abs(u.T @ u - np.eye(r)).max() <= 1e-4
    assert np.abs(v.T @ v - np.eye(r)).max() <= 1e-4
    # storage beyond the active rank stays exactly zero
    full_u = ops.convert_to_numpy(layer.u)
    assert np.all(full_u[:, r:] == 0)


def _fit_epochs(model, x, y, epochs, layer, batch_size=64):
    losses = []
    for _ in range(epochs):
        history = model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        losses.append(history.history["loss"][-1])
        _check_invariants(layer)
    return losses


def test_rank_goes_down_when_the_target_has_rank_three(rng):
    x, y = _linear_problem(rng, rank=3)
    layer = DynamicLowRankDense(64, max_rank=32, rank=16, tol=0.05)
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=10), loss="mse")
    bias_before = ops.convert_to_numpy(layer.bias).copy()
    losses = _fit_epochs(model, x, y, epochs=8, layer=layer)  # 20 steps/epoch: ends truncated
    assert layer.rank <= 6
    assert losses[-1] < 0.1 * losses[0]
    assert not np.allclose(ops.convert_to_numpy(layer.bias), bias_before)  # biases train


def test_rank_goes_up_when_the_target_needs_more(rng):
    x, y = _linear_problem(rng, rank=32)
    layer = DynamicLowRankDense(64, max_rank=32, rank=2, tol=0.05)
    model = keras.Sequential([keras.Input((64,)), layer])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2)), loss="mse")
    _fit_epochs(model, x, y, epochs=4, layer=layer)
    assert layer.rank >= 16


def test_loss_decreases_like_a_dense_layer_on_digits():
    from keras_lowrank.data import load_digits_arrays

    (x, y), (x_test, y_test) = load_digits_arrays("train"), load_digits_arrays("test")
    x, x_test = x.reshape(len(x), -1), x_test.reshape(len(x_test), -1)
    results = {}
    for name in ("dense", "dlrt"):
        keras.utils.set_random_seed(0)
        hidden = (
            keras.layers.Dense(128, activation="relu")
            if name == "dense"
            else DynamicLowRankDense(128, max_rank=32, rank=16, activation="relu")
        )
        model = keras.Sequential([keras.Input((64,)), hidden, keras.layers.Dense(10)])
        optimizer = keras.optimizers.Adam(3e-3)
        model.compile(
            optimizer=DLRT(optimizer) if name == "dlrt" else optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        losses = model.fit(x, y, batch_size=32, epochs=10, verbose=0).history["loss"]
        results[name] = losses, model.evaluate(x_test, y_test, verbose=0)[1]
    (dlrt_losses, dlrt_acc), (dense_losses, dense_acc) = results["dlrt"], results["dense"]
    assert dlrt_losses[-1] < 0.1 * dlrt_losses[0]
    assert dlrt_losses[-1] < 2 * dense_losses[-1] + 0.02
    assert dlrt_acc > dense_acc - 0.03


def test_non_finite_gradients_skip_the_step_and_keep_the_factors(rng):
    layer = DynamicLowRankDense(8, max_rank=4, rank=2)
    model = keras.Sequential([keras.Input((8,)), layer])
    optimizer = DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=2)
    model.compile(optimizer=optimizer, loss="mse")
    x = rng.normal(size=(16, 8)).astype("float32")
    y = np.zeros((16, 8), "float32")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # a full cycle: factors settle
    before = [ops.convert_to_numpy(w).copy() for w in model.weights]
    y_bad = y.copy()
    y_bad[0, 0] = np.nan
    model.fit(x, y_bad, batch_size=16, epochs=1, verbose=0)
    after = [ops.convert_to_numpy(w) for w in model.weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(ops.convert_to_numpy(optimizer.skipped_steps)) == 1
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # and training goes on
    assert all(np.all(np.isfinite(ops.convert_to_numpy(w))) for w in model.weights)


def test_an_inner_step_that_makes_s_non_finite_is_undone_whole(rng):
    """Finite gradients, but an inner step so large that S overflows to ±inf: the whole
    step is undone — every weight and optimizer slot as before, the cycle not advanced —
    and counted as skipped."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="plain"),
                              DynamicLowRankDense(8, max_rank=4, rank=2, name="low")])
    optimizer = DLRT(keras.optimizers.SGD(1e-2, momentum=0.9), steps_per_cycle=3)
    model.compile(optimizer=optimizer, loss="mse")
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.normal(size=(16, 8)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=4, verbose=0)  # mid-cycle, the momenta not zero
    before = [ops.convert_to_numpy(w).copy() for w in model.weights + optimizer.variables]
    cycle = int(ops.convert_to_numpy(optimizer.cycle_step))
    optimizer.inner_optimizer.learning_rate.assign(np.inf)  # S → ±inf (finite gradients)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = [ops.convert_to_numpy(w) for w in model.weights + optimizer.variables]
    changed = [v.path for v, b, a in zip(model.weights + optimizer.variables, before, after)
               if not np.array_equal(a, b)
               and v.path not in (optimizer.skipped_steps.path, optimizer.inner_optimizer.learning_rate.path)]
    assert changed == []
    assert int(ops.convert_to_numpy(optimizer.skipped_steps)) == 1
    assert int(ops.convert_to_numpy(optimizer.cycle_step)) == cycle


def _conv_model(max_rank=6, rank=3):
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        DynamicLowRankConv2D(8, 3, padding="same", max_rank=max_rank, rank=rank, activation="relu"),
        keras.layers.Flatten(),
        DynamicLowRankDense(10, max_rank=8, rank=4, spectral_weight=0.1),
    ])


def test_save_load_round_trip_and_resume_with_the_same_ranks(rng, tmp_path):
    x = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    model = _conv_model()
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 8 steps; fit ends the cycle (9)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))
    assert [l.rank for l in loaded.layers if hasattr(l, "rank")] == [
        l.rank for l in model.layers if hasattr(l, "rank")
    ]
    assert isinstance(loaded.optimizer, DLRT)
    assert int(ops.convert_to_numpy(loaded.optimizer.cycle_step)) == 9
    # Resumed training takes the same steps as uninterrupted training.
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-5)


def test_backup_and_restore_resumes_with_the_same_ranks(rng, tmp_path):
    x = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    def compiled():
        keras.utils.set_random_seed(7)
        model = _conv_model()
        model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    reference = compiled()
    reference.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = compiled()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                        callbacks=[backup, Interrupt()])
    resumed = compiled()
    resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[backup])
    assert [l.rank for l in resumed.layers if hasattr(l, "rank")] == [
        l.rank for l in reference.layers if hasattr(l, "rank")
    ]
    for a, b in zip(reference.weights, resumed.weights):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-5)


def test_steps_per_cycle_must_be_at_least_two():
    with pytest.raises(ValueError, match="steps_per_cycle"):
        DLRT(keras.optimizers.SGD(), steps_per_cycle=1)


def test_moments_of_s_are_carried_into_the_new_basis_not_reset(rng):
    """Keras' Adam corrects its bias by the global step, so zeroed moments would
    make S jump; at an augmentation its first moment is carried (same weight-space
    meaning) and its second moment stays a non-zero, non-negative estimate."""
    from keras_lowrank._low_rank.optimizer_slots import optimizer_slots

    keras.utils.set_random_seed(0)
    layer = DynamicLowRankDense(8, max_rank=6, rank=2, tol=0.01)
    model = keras.Sequential([keras.Input((10,)), layer])
    optimizer = DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3)
    model.compile(optimizer=optimizer, loss="mse")
    x, y = rng.normal(size=(32, 10)).astype("float32"), rng.normal(size=(32, 8)).astype("float32")
    for _ in range(3):  # one cycle: augment, Galerkin, truncate
        model.train_on_batch(x, y)
    slots = {slot.name.rsplit("_", 1)[-1]: slot for slot in optimizer_slots(optimizer, layer.s)}
    before = {name: ops.convert_to_numpy(slot.value).copy() for name, slot in slots.items()}
    u0, s0, v0, b0 = (ops.convert_to_numpy(w.value).copy() for w in (layer.u, layer.s, layer.v, layer.bias))
    model.train_on_batch(x, y)  # the next augmentation
    after = {name: ops.convert_to_numpy(slot.value) for name, slot in slots.items()}
    u1, v1 = (ops.convert_to_numpy(w.value) for w in (layer.u, layer.v))
    assert np.all(after["velocity"] >= 0) and np.any(after["velocity"] > 0)
    # Adam's momentum m ← β₁m + (1 − β₁)∇_S L, with ∇_S L = Uᵀ ∇_W L V (mse, by hand), means
    # U m Vᵀ in weight space; the augmented basis contains the old one, so that is kept.
    grad_w = x.T @ (2 * (x @ u0 @ s0 @ v0.T + b0 - y) / y.size)
    expected = u0 @ (0.9 * before["momentum"] + 0.1 * (u0.T @ grad_w @ v0)) @ v0.T
    np.testing.assert_allclose(u1 @ after["momentum"] @ v1.T, expected, atol=1e-5)
    assert int(np.sum(np.linalg.norm(u1, axis=0) > 0.5)) > int(np.sum(np.linalg.norm(u0, axis=0) > 0.5))


def _three_alike_layers_one_cycle(x, y, tols):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((16,))]
        + [DynamicLowRankDense(16, max_rank=8, rank=rank, tol=tol, activation="tanh")
           for rank, tol in zip((2, 3, 4), tols)]
        + [keras.layers.Dense(4)])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)  # one cycle
    return model


def test_layers_alike_are_integrated_together_as_each_alone(rng, monkeypatch):
    """Layers of equal shapes and settings share one augment / truncate, batched
    (``ops.vectorized_map``; by default on JAX on a GPU/TPU), forced on here on either
    backend; the result is each layer's own step. Truth: the same model whose
    tolerances differ by 1e-9 (the same truncations, no sharing)."""
    from keras_lowrank import optimizers

    monkeypatch.setattr(optimizers, "_integrator_mode", lambda _layer_count: "vmap")
    x = rng.normal(size=(96, 16)).astype("float32")
    y = rng.integers(0, 4, size=96)
    calls = []
    mapped = keras.ops.vectorized_map

    def counting(function, elements):
        calls.append(keras.tree.flatten(elements)[0].shape[0])
        return mapped(function, elements)

    monkeypatch.setattr(keras.ops, "vectorized_map", counting)
    shared = _three_alike_layers_one_cycle(x, y, (0.3, 0.3, 0.3))
    # augment and truncate, each one call over the three layers (per trace)
    assert calls and set(calls) == {3} and len(calls) % 2 == 0
    calls.clear()
    alone = _three_alike_layers_one_cycle(x, y, (0.3, 0.3 + 1e-9, 0.3 - 1e-9))
    assert calls == []
    low_rank = [layer for layer in shared.layers if hasattr(layer, "factors")]
    assert [layer.rank for layer in low_rank] == [
        layer.rank for layer in alone.layers if hasattr(layer, "factors")]
    for a, b in zip(shared.get_weights(), alone.get_weights()):
        # float32 rounding of three steps (batched and single kernels may differ)
        np.testing.assert_allclose(a, b, atol=1e-5)
    for layer in low_rank:
        _check_invariants(layer)


def test_the_host_callback_integrates_as_the_compiled_ops(rng, monkeypatch):
    """On a CPU (JAX; TensorFlow without XLA) augment and truncate run in NumPy
    (float64) in one host callback; the same cycles with every layer's own keras.ops in
    the compiled step give the same ranks, kernels and outputs (float32 rounding of two
    cycles: 1e-5; the bases themselves may turn where singular values nearly tie)."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("a host callback in a compiled step: JAX and TensorFlow")
    from keras_lowrank import optimizers

    x = rng.normal(size=(192, 16)).astype("float32")
    y = rng.integers(0, 4, size=192)
    calls = []
    on_host = optimizers._integrate_on_host
    monkeypatch.setattr(optimizers, "_integrate_on_host",
                        lambda *args: calls.append(1) or on_host(*args))
    models = {}
    for mode in ("host", None):
        monkeypatch.setattr(optimizers, "_integrator_mode", lambda _layer_count, mode=mode: mode)
        with pytest.warns(LowRankWarning, match="ended training at their max_rank"):  # tol 0.001 keeps all 8
            models[mode] = _three_alike_layers_one_cycle(x, y, (0.6, 0.1, 0.001))
        assert bool(calls) == (mode == "host")
        calls.clear()
    low_rank = [[layer for layer in model.layers if hasattr(layer, "factors")] for model in models.values()]
    ranks = [[layer.rank for layer in layers] for layers in low_rank]
    assert ranks[0] == ranks[1] and ranks[0] != [2, 3, 4]  # the ranks moved, alike
    for host_layer, ops_layer in zip(*low_rank):  # W = U S Vᵀ: the bases' rotations aside
        np.testing.assert_allclose(keras.ops.convert_to_numpy(host_layer.kernel),
                                   keras.ops.convert_to_numpy(ops_layer.kernel), atol=1e-5)
    np.testing.assert_allclose(models["host"].predict(x, verbose=0), models[None].predict(x, verbose=0),
                               atol=1e-5)
    for layer in low_rank[0]:
        _check_invariants(layer)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("in_graph_up_to", [2, 3])
def test_where_the_integrator_runs_on_each_backend(rng, monkeypatch, jit_compile, in_graph_up_to):
    """JAX's CPU: each layer's own ops in the compiled step up to ``_IN_GRAPH_UP_TO``
    low-rank layers (a host callback makes every step synchronous), one host callback
    (NumPy) beyond, and never a batched call — two batched LAPACK calls can deadlock XLA's
    thread pool there (VGG16 hung on 2 cores); JAX on a GPU/TPU: alike layers batched
    (``ops.vectorized_map``); TensorFlow on a CPU: one host callback (``tf.numpy_function``)
    whatever the count, but under XLA (``jit_compile=True``, a GPU's default), which cannot
    compile one, each layer its own ops, as on torch (eager). Three layers here, the
    threshold set to 2 and 3."""
    from keras_lowrank import optimizers

    if jit_compile and keras.backend.backend() != "tensorflow":
        pytest.skip("jit_compile decides only on TensorFlow (JAX always compiles, torch runs eagerly)")

    monkeypatch.setattr(optimizers, "_IN_GRAPH_UP_TO", in_graph_up_to)
    calls = []
    on_host = optimizers._integrate_on_host
    monkeypatch.setattr(optimizers, "_integrate_on_host",
                        lambda *args: calls.append("host") or on_host(*args))
    mapped = keras.ops.vectorized_map
    monkeypatch.setattr(keras.ops, "vectorized_map",
                        lambda *args: calls.append("vectorized_map") or mapped(*args))
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((16,))] + [DynamicLowRankDense(16, max_rank=8, rank=2)
                                                     for _ in range(3)] + [keras.layers.Dense(4)])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    layers = [layer for layer in model.layers if isinstance(layer, DynamicLowRankDense)]
    before = [ops.convert_to_numpy(layer.kernel) for layer in layers]
    model.fit(rng.normal(size=(64, 16)).astype("float32"), rng.integers(0, 4, size=64),
              batch_size=32, epochs=1, verbose=0)
    expected = set()
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() != "cpu":
            expected = {"vectorized_map"}
        elif len(layers) > in_graph_up_to:
            expected = {"host"}
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        expected = {"host"} if not (jit_compile or tf.config.list_logical_devices("GPU")) else set()
    assert set(calls) == expected
    for layer, kernel in zip(layers, before):  # whole cycles ran: the kernels moved, bases orthonormal
        _check_invariants(layer)
        assert not np.allclose(ops.convert_to_numpy(layer.kernel), kernel)
