import keras
import numpy as np
import pytest
from backend_gradients import input_gradient

from keras_lowrank import LowRankProjection, data

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def numpy_losses(a, w, b, loss="paper"):
    """L_c and L_n of docs/methods.md §1 written independently in column-vector form."""
    a = a.reshape(len(a), -1).astype(np.float64)
    shifted = (a + b).T                       # m × n, columns a_i + b
    residual = w.T @ shifted - shifted        # Wᵀ(a_i + b) − (a_i + b)
    if loss == "paper":
        l_c = np.mean(np.sum(residual**2, axis=0))
    else:  # ‖R‖²_F / ‖A − ā‖²_F
        centred = a - a.mean(axis=0)
        l_c = np.linalg.norm(residual) ** 2 / np.linalg.norm(centred) ** 2
    l_n = np.mean(np.abs(1 - np.linalg.norm(a, axis=1)))
    return l_c, l_n


def best_rank(w, r):
    u, s, vt = np.linalg.svd(w)
    return (u[:, :r] * s[:r]) @ vt[:r]


def lr_model(input_shape, **kwargs):
    inputs = keras.Input(input_shape)
    features = keras.layers.Dense(12, activation="relu", name="features")(inputs)
    projected = LowRankProjection(name="lr", **kwargs)(features)
    return keras.Model(inputs, keras.layers.Dense(3)(projected))


def weights_of(layer):
    return (keras.ops.convert_to_numpy(layer.projection_matrix).astype(np.float64),
            keras.ops.convert_to_numpy(layer.bias).astype(np.float64))


@pytest.mark.parametrize("loss", ["paper", "relative"])
@pytest.mark.parametrize("shape,flatten", [((6,), True), ((4, 4, 3), True),
                                           ((4, 4, 3), False)])
def test_losses_match_formula_and_output_is_input(rng, shape, flatten, loss):
    layer = LowRankProjection(2, projection_weight=0.7, norm_weight=1.9, loss=loss, warmup_steps=0,
                              flatten=flatten, bias_initializer="random_normal")
    x = rng.normal(size=(5,) + shape).astype("float32")
    y = layer(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y), x)
    w, b = weights_of(layer)
    a = x.reshape(-1, shape[-1]) if not flatten else x
    l_c, l_n = numpy_losses(a, w, b, loss)
    got = [float(keras.ops.convert_to_numpy(v)) for v in layer.losses]
    np.testing.assert_allclose(got, [0.7 * l_c, 1.9 * l_n], rtol=2e-5)


def test_defaults_relative_loss_alone_and_paper_with_norm_loss(rng):
    x = rng.normal(size=(6, 5)).astype("float32")
    relative, paper = LowRankProjection(2), LowRankProjection(2, loss="paper")
    relative(x), paper(x)
    assert (relative.projection_weight, relative.norm_weight, relative.warmup_steps) == (2.0, 0.0, 500)
    assert (paper.projection_weight, paper.norm_weight, paper.warmup_steps) == (1.0, 1.0, 0)
    assert len(relative.losses) == 1 and len(paper.losses) == 2


def test_relative_loss_ignores_the_representations_scale(rng):
    # L_c(c·a) with b → c·b equals L_c(a): the residual and the spread both scale by c.
    layer = LowRankProjection(2, bias_initializer="random_normal")
    a = rng.normal(size=(9, 7)).astype("float32")
    layer(a)
    bias = keras.ops.convert_to_numpy(layer.bias)
    values = []
    for c in (1e-3, 1.0, 1e3):
        layer.bias.assign(c * bias)
        values.append(float(keras.ops.convert_to_numpy(layer.projection_loss(c * a))))
    np.testing.assert_allclose(values, values[1], rtol=1e-5)
    layer.bias.assign(bias)
    w, b = weights_of(layer)
    np.testing.assert_allclose(values[1], numpy_losses(a, w, b, "relative")[0], rtol=1e-5)


def test_relative_loss_without_spread(rng):
    """One sample (or identical ones) is measured against its own energy; an all-zero
    batch adds nothing; gradients stay finite."""
    layer = LowRankProjection(2, bias_initializer="random_normal")
    a = rng.normal(size=(1, 5)).astype("float32")
    layer(a)
    w, b = weights_of(layer)
    residual = (a + b) @ w - (a + b)
    expected = np.sum(residual**2) / np.sum(a.astype(np.float64) ** 2)
    for batch in (a, np.repeat(a, 3, axis=0)):
        got = float(keras.ops.convert_to_numpy(layer.projection_loss(batch)))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    zeros = np.zeros((3, 5), "float32")
    assert float(keras.ops.convert_to_numpy(layer.projection_loss(zeros))) == 0.0
    assert np.all(np.isfinite(input_gradient(layer.projection_loss, zeros)))


def test_configs_saved_before_the_loss_option_load_as_the_paper_loss():
    config = LowRankProjection(3, loss="paper").get_config()
    del config["loss"], config["norm_weight"], config["projection_weight"], config["warmup_steps"]
    old = LowRankProjection.from_config(config)
    assert (old.loss, old.norm_weight, old.warmup_steps) == ("paper", 1.0, 0)
    assert LowRankProjection.from_config(LowRankProjection(3).get_config()).loss == "relative"


def test_projection_output_and_compression_round_trip(rng):
    layer = LowRankProjection(3, output_mode="projection",
                              bias_initializer="random_normal")
    x = rng.normal(size=(7, 10)).astype("float32")
    layer(x)  # build
    w, b = weights_of(layer)
    expected = (x + b) @ w - b
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected,
                               atol=1e-5)
    layer.threshold()
    w, b = weights_of(layer)
    coefficients = layer.encode(x)
    assert tuple(coefficients.shape) == (7, 3)
    decoded = keras.ops.convert_to_numpy(layer.decode(coefficients))
    np.testing.assert_allclose(decoded, (x + b) @ w - b, atol=1e-4)


def test_threshold_is_the_best_rank_r_approximation(rng):
    layer = LowRankProjection(4, kernel_initializer="random_normal")
    layer.build((None, 9))
    before, _ = weights_of(layer)
    layer.threshold()
    after, _ = weights_of(layer)
    np.testing.assert_allclose(after, best_rank(before, 4), atol=1e-5)
    assert np.linalg.matrix_rank(after, tol=1e-4) == 4


@pytest.mark.own_precision
@pytest.mark.parametrize("m,r", [(64, 5), (200, 12)])
def test_randomized_threshold_matches_exact_svd(rng, m, r):
    # As in training: rank r plus the drift of a few gradient steps.
    layer = LowRankProjection(r, svd="auto")
    layer.build((None, m))
    assert layer.randomized
    low = rng.normal(size=(m, r)) @ rng.normal(size=(r, m))
    drifted = low + 1e-2 * rng.normal(size=(m, m))
    layer.kernel.assign(drifted.astype("float32"))
    layer.threshold()
    w, _ = weights_of(layer)
    best = best_rank(drifted, r)
    assert np.linalg.norm(w - best) <= 1e-4 * np.linalg.norm(best)
    assert np.linalg.matrix_rank(w, tol=1e-3 * np.linalg.norm(w, 2)) == r


@pytest.mark.own_precision
def test_randomized_thresholds_in_training_stay_the_best_rank_r_approximation():
    # From the second thresholding on, the range finder starts from the previous one's
    # right singular vectors with one power iteration instead of a random sketch with two.
    # Adam moves W far between thresholdings here (σ_{r+1} up to 0.9 σ_r): each training
    # thresholding must still give Eckart–Young's approximation of the W it found.
    m, rank, every = 256, 10, 10
    x, y = data.load_digits_arrays("train")
    keras.utils.set_random_seed(0)
    layer = LowRankProjection(rank, update_every=every)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(m, activation="relu"), layer, keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert layer.randomized
    checked = 0
    for step in range(3 * every + 1):
        due = step % every == 0
        if due:
            kernel, correction = (keras.ops.convert_to_numpy(v).astype("float64")
                                  for v in (layer.kernel, layer.threshold_correction))
        start = 64 * step % (len(x) - 64)
        model.train_on_batch(x[start:start + 64], y[start:start + 64])
        if not due:
            continue
        thresholded = kernel + keras.ops.convert_to_numpy(layer.threshold_correction)  # before the update
        w = kernel + correction
        best = best_rank(w, rank)
        # Eckart–Young's error, to float32 rounding (~1e-6 of it; 1.005× without the power iteration).
        assert np.linalg.norm(w - thresholded) <= (1 + 1e-4) * np.linalg.norm(w - best), step
        if step:  # (the initial orthogonal W has no unique best rank-r part)
            # Measured ≤ 1.2e-4 (float32 factorizations, and the range finder's own error
            # where σ_r and σ_{r+1} are close); without the power iteration up to 3.5e-2.
            assert np.linalg.norm(thresholded - best) <= 1e-3 * np.linalg.norm(best), step
        # The sketch kept for the next one: right singular vectors spanning W's row space.
        basis = keras.ops.convert_to_numpy(layer.sketch).astype("float64")[:, :rank]
        np.testing.assert_allclose(basis.T @ basis, np.eye(rank), atol=1e-5)
        assert np.linalg.norm(thresholded - thresholded @ basis @ basis.T) <= 1e-4 * np.linalg.norm(thresholded)
        checked += 1
    assert checked == 4


def test_auto_uses_exact_svd_where_it_is_cheaper():
    layer = LowRankProjection(8)
    layer.build((None, 30))   # r + 10 = 18 ≥ 30 / 2
    assert not layer.randomized and len(layer.non_trainable_weights) == 2


def test_fit_thresholds_on_first_step_and_every_k_steps(rng):
    # With lr = 0 the optimizer leaves the kernel alone, so W after fit is the
    # first step's threshold of the initial W; the counter counts train steps.
    model = lr_model((5,), rank=3, update_every=4, kernel_initializer="random_normal")
    model.compile(keras.optimizers.SGD(0.0), "mse")
    layer = model.get_layer("lr")
    initial, _ = weights_of(layer)
    x, y = rng.normal(size=(24, 5)), rng.normal(size=(24, 3))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    w, _ = weights_of(layer)
    np.testing.assert_allclose(w, best_rank(initial, 3), atol=1e-5)
    assert int(keras.ops.convert_to_numpy(layer.steps)) == 6


def test_fit_trains_kernel_then_thresholds_it(rng):
    model = lr_model((5,), rank=2, update_every=3)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    layer = model.get_layer("lr")
    x, y = rng.normal(size=(32, 5)), rng.normal(size=(32, 3))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # steps 0..7, thresholds at 0, 3, 6
    trained, _ = weights_of(layer)
    assert np.linalg.matrix_rank(trained, tol=1e-6) > 2  # the kernel moved after step 6
    model.optimizer.learning_rate.assign(0.0)
    model.fit(x[:8], y[:8], batch_size=4, epochs=1, verbose=0)  # steps 8, 9: thresholds at 9
    w, _ = weights_of(layer)
    np.testing.assert_allclose(w, best_rank(trained, 2), atol=1e-5)


@pytest.mark.parametrize("loss", ["paper", "relative"])
def test_losses_enter_fit_loss(rng, loss):
    model = lr_model((5,), rank=2, projection_weight=2.0, norm_weight=3.0, loss=loss, warmup_steps=0)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 3))
    layer = model.get_layer("lr")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # thresholds W once
    evaluated = model.evaluate(x, y, batch_size=8, verbose=0)
    features = keras.Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    w, b = weights_of(layer)
    l_c, l_n = numpy_losses(features, w, b, loss)
    mse = np.mean((model.predict(x, verbose=0) - y) ** 2)
    np.testing.assert_allclose(evaluated, mse + 2 * l_c + 3 * l_n, rtol=1e-4)


@pytest.mark.parametrize("loss", ["paper", "relative"])
def test_warm_up_ramps_the_projection_weight(rng, loss):
    """The added loss is λ_c·min(1, t/T)·L_c, t = training steps taken before the call."""
    model = lr_model((5,), rank=2, projection_weight=1.5, norm_weight=0.0, loss=loss, warmup_steps=4,
                     update_every=1000)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    layer = model.get_layer("lr")
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 3))
    features = keras.Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    mse = np.mean((model.predict(x, verbose=0) - y) ** 2)
    for steps in (0, 1, 3, 4, 6):
        taken = int(keras.ops.convert_to_numpy(layer.steps))
        if steps > taken:
            model.fit(x, y, batch_size=8, epochs=steps - taken, verbose=0)  # one step per epoch
        assert int(keras.ops.convert_to_numpy(layer.steps)) == steps
        w, b = weights_of(layer)
        l_c = numpy_losses(features, w, b, loss)[0]
        evaluated = model.evaluate(x, y, batch_size=8, verbose=0)
        np.testing.assert_allclose(evaluated, mse + 1.5 * min(1.0, steps / 4) * l_c, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss", ["paper", "relative"])
def test_norm_loss_gradient_finite_for_zero_features(loss):
    layer = LowRankProjection(1, loss=loss)
    layer(keras.ops.zeros((3, 4)))
    grad = input_gradient(lambda v: layer.norm_loss(v) + layer.projection_loss(v),
                          np.zeros((3, 4), "float32"))
    assert np.all(np.isfinite(grad))


def test_save_load_round_trip(tmp_path, rng):
    model = lr_model((5,), rank=2, update_every=2, output_mode="projection")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 3))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "lr.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    layer, twin = model.get_layer("lr"), loaded.get_layer("lr")
    assert twin.get_config() == layer.get_config()
    for v, u in zip(layer.weights, twin.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(u))
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), loaded.evaluate(x, y, verbose=0),
                               rtol=1e-6)


def test_jit_compiled_fit(rng):
    model = lr_model((5,), rank=2, update_every=2)
    model.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=True)
    x, y = rng.normal(size=(32, 5)), rng.normal(size=(32, 3))
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(keras.ops.convert_to_numpy(model.get_layer("lr").steps)) == 12


@pytest.mark.parametrize(
    "kwargs,match",
    [({"rank": 0}, "`rank`"), ({"rank": 2.5}, "`rank`"),
     ({"rank": 2, "projection_weight": -1}, "`projection_weight`"),
     ({"rank": 2, "norm_weight": -0.1}, "`norm_weight`"),
     ({"rank": 2, "update_every": 0}, "`update_every`"),
     ({"rank": 2, "output_mode": "coefficients"}, "`output_mode`"),
     ({"rank": 2, "svd": "lanczos"}, "`svd`")],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LowRankProjection(**kwargs)


def test_bad_input_shapes_are_named():
    with pytest.raises(ValueError, match="`rank` must be ≤ the feature size m=6"):
        LowRankProjection(7).build((None, 6))
    with pytest.raises(ValueError, match="rank ≥ 2"):
        LowRankProjection(1).build((6,))
    with pytest.raises(ValueError, match="known"):
        LowRankProjection(1).build((None, None))


@pytest.mark.parametrize("flatten", [True, False])
def test_fit_on_conv_maps_holds_rank(rng, flatten):
    inputs = keras.Input((6, 6, 1))
    maps = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    maps = LowRankProjection(2, flatten=flatten, update_every=5, name="lr")(maps)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(maps)))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    x, y = rng.uniform(size=(20, 6, 6, 1)), rng.normal(size=(20, 2))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    layer = model.get_layer("lr")
    w, _ = weights_of(layer)
    assert w.shape == ((144, 144) if flatten else (4, 4))
    layer.threshold()
    assert np.linalg.matrix_rank(weights_of(layer)[0], tol=1e-5) == 2


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="strides are torch's")
def test_kernel_is_stored_row_major_on_torch():
    # Keras' "orthogonal" initializer gives a transposed (column-major) tensor on torch,
    # and a variable keeps its initial layout: Adam's updates then mixed layouts (~10×
    # slower elementwise work at 1024 features). Gradients follow the kernel's layout.
    layer = LowRankProjection(4)
    layer.build((None, 32))
    assert layer.kernel.value.is_contiguous()
    layer(np.random.default_rng(0).normal(size=(8, 32)).astype("float32"), training=True)
    sum(layer.losses).backward()
    assert layer.kernel.value.grad.is_contiguous()


def test_thresholding_in_a_training_step_of_a_wide_layer_keeps_the_best_rank_r_part():
    # 512 features: on JAX's CPU the thresholding's QRs and SVD run on the host
    # (keras_lowrank._host) inside the compiled step's branch. With a zero learning
    # rate W after one step is exactly what thresholding made of the initial W, whose
    # spectrum 2^-i has gaps the randomized range finder resolves to float32 precision.
    m, rank = 512, 4
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(m, m)))
    v, _ = np.linalg.qr(rng.normal(size=(m, m)))
    spectrum = 0.5 ** np.arange(m)
    initial = ((u * spectrum) @ v.T).astype("float32")
    layer = LowRankProjection(rank, update_every=1, kernel_initializer=lambda shape, dtype=None: initial)
    model = keras.Sequential([keras.Input((m,)), layer])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = rng.normal(size=(8, m)).astype("float32")
    model.fit(x, x, epochs=1, batch_size=8, verbose=0)
    w = keras.ops.convert_to_numpy(layer.projection_matrix).astype("float64")
    best = (u[:, :rank] * spectrum[:rank]) @ v[:, :rank].T  # Eckart–Young, in float64
    # float32 products of a unit-norm matrix: ~1e-7 per entry, grown by m = 512 terms.
    np.testing.assert_allclose(w, best, atol=1e-5)
