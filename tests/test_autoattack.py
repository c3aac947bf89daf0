"""APGD, Square and AutoAttack against independent truths: the paper's checkpoint
formula, a float64 numpy port of the authors' APGD loop on a softmax regression,
invariances of the DLR loss, PGD-100, and the masking checks on models built to
mask (rounding) or to randomise (noise at inference). ART's implementations are
compared in tests/test_autoattack_art.py."""

import math

import keras
import numpy as np
import pytest
from models import linear_classifier, unit_data
from randomised import RandomPhase

from keras_lowrank import LowRankWarning, data
from keras_lowrank.robustness import PGD, PerturbedModel, evaluate_robustness
from keras_lowrank.robustness._classifier import ClassifierView
from keras_lowrank.robustness.attacks import (
    APGD,
    APGDT,
    FAB,
    AutoAttack,
    Square,
    apgd_checkpoints,
    dlr_loss,
    targeted_dlr_loss,
)

pytestmark = pytest.mark.torch  # also in the torch half


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits_arrays("test")
    return x[:150], y[:150]


@pytest.fixture(scope="module")
def trained_cnn(digits):
    keras.utils.set_random_seed(0)
    x, y = data.load_digits_arrays("train")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:600], y[:600], epochs=8, batch_size=32, verbose=0)
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# ---------------------------------------------------------------- the schedule


@pytest.mark.parametrize("n_iter", [100, 200, 1000])
def test_checkpoints_follow_the_papers_formula(n_iter):
    """p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); checks
    after ⌈p_j N⌉ iterations (Croce & Hein 2020, §3.2). The authors' code rounds
    0.22N, 0.03N, 0.06N down, so the two agree where those are whole numbers."""
    expected, p_prev, p = [], 0.0, 0.22
    while math.ceil(p * n_iter - 1e-9) <= n_iter:
        expected.append(math.ceil(p * n_iter - 1e-9))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    got = [i + 1 for i, _ in apgd_checkpoints(n_iter)]
    assert got == expected[:len(got)]
    assert len(expected) - len(got) <= 1  # the last may fall on the final iteration
    windows = [k for _, k in apgd_checkpoints(n_iter)]
    assert windows == np.diff([0] + got).tolist()


# ---------------------------------------------------------------- the losses


def test_dlr_losses_match_numpy_and_are_shift_and_scale_invariant(rng):
    z = rng.normal(size=(32, 10)).astype("float32") * 3
    y = rng.integers(0, 10, 32)
    t = (y + 1 + rng.integers(0, 9, 32)) % 10
    zs = np.sort(z.astype(np.float64), axis=1)
    zy, zt = z[np.arange(32), y], z[np.arange(32), t]
    other = np.where(z.argmax(1) == y, zs[:, -2], zs[:, -1])
    expected = -(zy - other) / (zs[:, -1] - zs[:, -3] + 1e-12)
    expected_t = -(zy - zt) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
    got = keras.ops.convert_to_numpy(dlr_loss(z, y))
    got_t = keras.ops.convert_to_numpy(targeted_dlr_loss(z, y, t))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_t, expected_t, rtol=1e-5, atol=1e-5)
    for shift, scale in ((5.0, 1.0), (-3.0, 7.0), (0.0, 0.25)):
        moved = (z * scale + shift).astype("float32")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(dlr_loss(moved, y)), got, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(targeted_dlr_loss(moved, y, t)), got_t,
                                   rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- APGD against the authors' loop


def tanh_network(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="tanh", bias_initializer="random_normal"),
                             keras.layers.Dense(10, bias_initializer="random_normal")])


def reference_apgd(model, x, y, start, eps, n_iter, norm, loss, rho=0.75):
    """A float64 numpy port of the authors' ``attack_single_run`` (autopgd_base.py)
    on a one-hidden-layer tanh network, gradients by hand, written loop for loop."""
    w1, b1, w2, b2 = (np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in model.weights)
    n = len(x)
    shape = x.shape
    x = x.reshape(n, -1).astype(np.float64)
    rows = np.arange(n)

    def backward(a, dz):  # d loss / d a from d loss / d z
        h = np.tanh(a @ w1 + b1)
        return ((dz @ w2.T) * (1 - h**2)) @ w1.T

    def loss_and_grad(a):
        z = np.tanh(a @ w1 + b1) @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        if loss == "ce":
            return -np.log(p[rows, y]), backward(a, p - np.eye(10)[y]), z
        order = np.argsort(z, axis=1)
        zs = np.take_along_axis(z, order, 1)
        top_is_y = order[:, -1] == y
        other_idx = np.where(top_is_y, order[:, -2], order[:, -1])
        num = z[rows, y] - z[rows, other_idx]
        den = zs[:, -1] - zs[:, -3] + 1e-12
        # d/dz of −num/den: −(e_y − e_other)/den + num/den² (e_π1 − e_π3)
        dz = np.zeros_like(z)
        dz[rows, y] -= 1 / den
        dz[rows, other_idx] += 1 / den
        dz[rows, order[:, -1]] += num / den**2
        dz[rows, order[:, -3]] -= num / den**2
        return -num / den, backward(a, dz), z

    def project(v):
        if norm == "inf":
            v = np.minimum(np.maximum(v, x - eps), x + eps)
        else:
            d = v - x
            length = np.sqrt((d**2).sum(1, keepdims=True))
            v = x + d / (length + 1e-12) * np.minimum(eps, length)
        return np.clip(v, 0, 1)

    def direction(g):
        if norm == "inf":
            return np.sign(g)
        return g / (np.sqrt((g**2).sum(1, keepdims=True)) + 1e-12)

    k = max(int(0.22 * n_iter), 1)
    k_min, decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    x_adv = np.clip(start.reshape(n, -1).astype(np.float64), 0, 1)
    x_best = x_adv.copy()
    x_best_adv = x_adv.copy()
    loss_steps = np.zeros((n_iter, n))
    loss_indiv, grad, z = loss_and_grad(x_adv)
    grad_best = grad.copy()
    acc = z.argmax(1) == y
    loss_best = loss_indiv.copy()
    step = np.full((n, 1), 2.0 * eps)
    x_adv_old = x_adv.copy()
    counter3 = 0
    loss_best_last_check = loss_best.copy()
    reduced_last_check = np.ones(n)
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        x1 = project(x_adv + step * direction(grad))
        x_adv = project(x_adv + (x1 - x_adv) * a + grad2 * (1 - a))
        loss_indiv, grad, z = loss_and_grad(x_adv)
        pred = z.argmax(1) == y
        acc = np.minimum(acc, pred)
        x_best_adv[~pred] = x_adv[~pred]
        loss_steps[i] = loss_indiv
        ind = loss_indiv > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss_indiv[ind]
        counter3 += 1
        if counter3 == k:
            t = np.zeros(n)
            for c in range(k):  # loss_steps[-1] is the unfilled last row (0), as in the authors' code
                t += loss_steps[i - c] > loss_steps[i - c - 1]
            flag = (t <= k * rho) | ((1 - reduced_last_check) * (loss_best_last_check >= loss_best) > 0)
            reduced_last_check = flag.astype(float)
            loss_best_last_check = loss_best.copy()
            step[flag] /= 2.0
            x_adv[flag], grad[flag] = x_best[flag], grad_best[flag]
            k = max(k - decr, k_min)
            counter3 = 0
    return {"x_adv": x_best_adv.reshape(shape), "robust": acc.astype(float), "x_best": x_best.reshape(shape),
            "loss_best": loss_best, "step_size": step[:, 0]}


@pytest.mark.parametrize("norm,eps,loss,n_iter,identical", [
    (2, 0.5, "ce", 20, 1.0), (2, 2.0, "ce", 30, 1.0), ("inf", 0.05, "ce", 30, 0.9), ("inf", 0.1, "dlr", 30, 0.6)])
def test_apgd_equals_the_authors_loop(digits, rng, norm, eps, loss, n_iter, identical):
    """Float32 against float64: with the L2 step (a smooth function of the gradient)
    every example takes the same path, halvings included. The L∞ step's sign(∇)
    of a near-zero component, and a loss on a plateau (counted as rising or not
    by its last bits), turn rounding into a different but equally valid path for
    some examples: there the share of identical schedules is bounded instead."""
    x, y = digits[0][:40], digits[1][:40]
    model = tanh_network()
    noise = rng.uniform(-1, 1, x.shape) if norm == "inf" else rng.normal(size=x.shape)
    size = np.abs(noise).reshape(40, -1).max(1) if norm == "inf" else np.sqrt((noise**2).reshape(40, -1).sum(1))
    start = np.clip(x + eps * noise / size[:, None, None, None], 0, 1).astype("float32")
    ours = APGD(eps, norm=norm, loss=loss, steps=n_iter).trace(model, x, y, start)
    expected = reference_apgd(model, x, y, start, eps, n_iter, norm, loss)
    same = ours["step_size"] == expected["step_size"].astype("float32")
    assert same.mean() >= identical, (ours["step_size"], expected["step_size"])
    assert len(set(expected["step_size"].tolist())) > 1  # the test sees halvings
    np.testing.assert_array_equal(ours["robust"], expected["robust"])
    if identical == 1.0:  # the same path: points agree up to float32 rounding
        for key in ("x_best", "x_adv"):
            np.testing.assert_allclose(ours[key], expected[key], atol=1e-5)
        np.testing.assert_allclose(ours["loss_best"], expected["loss_best"], rtol=1e-4, atol=1e-4)


def reference_eta(s, transpose=False):
    """The authors' ``eta``/``eta_rectangles`` (square.py), ported literally."""
    def rectangles(x, y):
        delta = np.zeros([x, y])
        x_c, y_c = x // 2 + 1, y // 2 + 1
        counter2 = [x_c - 1, y_c - 1]
        for counter in range(0, max(x_c, y_c)):
            delta[max(counter2[0], 0):min(counter2[0] + (2 * counter + 1), x),
                  max(0, counter2[1]):min(counter2[1] + (2 * counter + 1), y)] += 1.0 / (counter + 1) ** 2
            counter2[0] -= 1
            counter2[1] -= 1
        return delta / np.sqrt((delta ** 2).sum())

    delta = np.zeros([s, s])
    delta[:s // 2] = rectangles(s // 2, s)
    delta[s // 2:] = -1.0 * rectangles(s - s // 2, s)
    delta /= np.sqrt((delta ** 2).sum())
    return delta.T if transpose else delta


@pytest.mark.parametrize("side", [3, 5, 7, 9, 15])
@pytest.mark.parametrize("transpose", [False, True])
def test_square_l2_window_pattern_equals_the_authors(side, transpose):
    """The graph-side pattern (side a tensor, on the whole grid) against the
    authors' construction, placed at a window of a 16×16 grid."""
    from keras_lowrank.robustness.attacks.square import _eta_on_grid, _eta_tail

    h = w = 16
    top, left = 1, 16 - side
    rows = keras.ops.reshape(keras.ops.arange(h, dtype="int32"), (h, 1))
    cols = keras.ops.reshape(keras.ops.arange(w, dtype="int32"), (1, w))
    got = keras.ops.convert_to_numpy(_eta_on_grid(
        rows - top, cols - left, keras.ops.convert_to_tensor(side, "int32"),
        keras.ops.convert_to_tensor(transpose), keras.ops.convert_to_tensor(_eta_tail(18))))
    expected = np.zeros((h, w))
    expected[top:top + side, left:left + side] = reference_eta(side, transpose)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def reference_square_l2(predict, x, y, eps, sides, noise):
    """The authors' Square L2 loop (square.py, norm "L2"), ported to numpy for
    channels-last images, consuming the given random draws."""
    init_signs, init_flips, draws, signs = (np.asarray(keras.ops.convert_to_numpy(n)) for n in noise)
    n, h, w, c = x.shape

    def margin(points):
        z = predict(points)
        others = np.where(np.eye(z.shape[1])[y] > 0, -np.inf, z).max(1)
        return z[np.arange(n), y] - others

    def to_ball(delta):
        size = np.sqrt((delta ** 2).sum(axis=(1, 2, 3), keepdims=True))
        return np.clip(x + delta / (size + 1e-12) * eps, 0, 1).astype("float32")

    delta = np.zeros_like(x)
    side0 = h // 5
    start = (h - side0 * 5) // 2
    block = 0
    top = start
    for _ in range(h // side0):
        left = start
        for _ in range(w // side0):
            if top + side0 <= h and left + side0 <= w:
                pattern = reference_eta(side0, init_flips[block] > 0.5)
                delta[:, top:top + side0, left:left + side0, :] += (
                    pattern[None, :, :, None] * init_signs[:, block][:, None, None, :])
                block += 1
            left += side0
        top += side0
    x_best = to_ball(delta)
    margin_min = margin(x_best)
    for i, side in enumerate(sides):
        if not (margin_min > 0).any():
            break
        u = draws[i]
        vh, vw = int(np.floor(u[0] * (h - side))), int(np.floor(u[1] * (w - side)))
        vh2, vw2 = int(np.floor(u[2] * (h - side))), int(np.floor(u[3] * (w - side)))
        delta = x_best - x
        window = delta[:, vh:vh + side, vw:vw + side, :]
        norm_window = np.sqrt((window ** 2).sum(axis=(1, 2), keepdims=True))
        mask = np.zeros((1, h, w, 1))
        mask[:, vh:vh + side, vw:vw + side] = 1
        mask[:, vh2:vh2 + side, vw2:vw2 + side] = 1
        norm_image = np.sqrt((delta ** 2).sum(axis=(1, 2, 3), keepdims=True))
        norm_windows = np.sqrt(((delta * mask) ** 2).sum(axis=(1, 2, 3), keepdims=True))
        new = reference_eta(side, u[4] > 0.5)[None, :, :, None] * signs[i][:, None, None, :]
        new = new + window / (1e-12 + norm_window)
        new = new / (1e-12 + np.sqrt((new ** 2).sum(axis=(1, 2), keepdims=True))) * np.sqrt(
            np.maximum(eps ** 2 - norm_image ** 2, 0) / c + norm_windows ** 2)
        delta[:, vh2:vh2 + side, vw2:vw2 + side] = 0
        delta[:, vh:vh + side, vw:vw + side] = new
        x_new = to_ball(delta)
        new_margin = margin(x_new)
        better = (margin_min > 0) & ((new_margin < margin_min) | (new_margin <= 0))
        margin_min = np.where(better, new_margin, margin_min)
        x_best = np.where(better[:, None, None, None], x_new, x_best)
    return x_best, margin_min


def test_square_l2_equals_the_authors_loop(rng):
    """Same random draws, same result: the graph version (dynamic window sizes as
    masks) against the authors' loop with slices."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 10, 2)), keras.layers.Conv2D(4, 3, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    x = rng.uniform(0, 1, (24, 10, 10, 2)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    attack = Square(1.5, norm=2, steps=80, seed=0)
    noise = attack._noise(x)
    from keras_lowrank.robustness._gradients import compile_function

    scores = ClassifierView(model).scores
    found, margin, _ = compile_function(model, lambda a, b, n: attack._square_run(scores, a, b, n))(x, y, noise)
    expected, expected_margin = reference_square_l2(
        lambda a: model.predict(a, verbose=0), x, y, 1.5, attack._windows(10, 10)[0], noise)
    assert len(set(attack._windows(10, 10)[0].tolist())) > 1  # several window sizes
    np.testing.assert_allclose(keras.ops.convert_to_numpy(found), expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(margin), expected_margin, atol=1e-4)
    assert (expected_margin <= 0).sum() > 0  # it broke some


# ---------------------------------------------------------------- attacks on a trained CNN


def test_apgd_is_at_least_as_strong_as_pgd_100(trained_cnn, digits):
    x, y = digits
    for eps in (0.05, 0.1):
        pgd = accuracy(trained_cnn, PGD(eps, steps=100, seed=0)(trained_cnn, x, y), y)
        apgd = accuracy(trained_cnn, APGD(eps, seed=0)(trained_cnn, x, y), y)
        assert apgd <= pgd + 1 / len(x), (eps, apgd, pgd)


@pytest.mark.parametrize("attack", [
    APGD(0.1, seed=0, steps=20), APGDT(0.1, n_target_classes=3, steps=20, seed=0),
    APGD(1.0, norm=2, loss="dlr", steps=20, seed=0), Square(0.1, steps=300, seed=0),
    Square(1.0, norm=2, steps=300, seed=0),
], ids=lambda a: a.name)
def test_attacks_stay_in_the_ball_and_only_return_misclassified_points(trained_cnn, digits, attack):
    x, y = digits
    adversarial = attack(trained_cnn, x, y)
    delta = (adversarial - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if attack.norm == "inf" else np.sqrt((delta.astype(np.float64) ** 2).sum(1))
    assert size.max() <= attack.eps * (1 + 1e-5) + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    changed = np.any(delta != 0, axis=1)
    predicted = np.argmax(trained_cnn.predict(adversarial, verbose=0), axis=1)
    assert np.all(predicted[changed] != y[changed])  # a returned change is an adversarial
    assert changed.sum() > 0
    assert accuracy(trained_cnn, adversarial, y) < accuracy(trained_cnn, x, y)


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="on torch, tests/test_torch_backend.py runs AutoAttack against torchattacks' "
                           "ensemble and in a report (keeps the torch half within its time)")
def test_autoattack_is_the_worst_case_of_its_stages(trained_cnn, digits):
    x, y = digits
    eps = 0.08
    attack = AutoAttack(eps, steps=15, square_steps=300, seed=0)
    result = attack.run(trained_cnn, x, y)
    assert result.clean_accuracy == pytest.approx(accuracy(trained_cnn, x, y))
    # its adversarials are what it says: robust accuracy re-measured
    assert result.robust_accuracy == pytest.approx(accuracy(trained_cnn, result.x_adv, y))
    values = list(result.stage_accuracy.values())
    assert values == sorted(values, reverse=True) and values[-1] == result.robust_accuracy
    for stage in attack.stages:  # each stage alone is no stronger than the ensemble
        alone = accuracy(trained_cnn, stage(trained_cnn, x, y), y)
        assert result.robust_accuracy <= alone + 1e-9
    assert result.flags["max_perturbation"] <= eps * (1 + 1e-5)
    assert result.flags["zero_gradient_share"] == 0 and not result.flags["randomized"]
    # the same ensemble inside Keras' evaluate (every stage on the whole batch)
    wrapped = PerturbedModel(trained_cnn, attack)
    wrapped.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    in_graph = wrapped.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["accuracy"]
    assert abs(in_graph - result.robust_accuracy) <= 0.02


# ---------------------------------------------------------------- masking flags


class Rounding(keras.layers.Layer):
    """Quantises inputs to 4 levels: the input gradient is exactly 0."""

    def call(self, x):
        return keras.ops.round(x * 3) / 3


class NoisyInference(keras.layers.Layer):
    """Adds noise also at inference: a randomised defence."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x):
        return x + keras.random.normal(keras.ops.shape(x), stddev=0.3, seed=self.seed)


def with_front(trained, layer):
    model = keras.Sequential([keras.Input((8, 8, 1)), layer] + trained.layers)
    return model


def test_flags_gradient_masking_on_a_rounding_model(trained_cnn, digits):
    x, y = digits
    model = with_front(trained_cnn, Rounding())
    result = AutoAttack(0.2, steps=10, square_steps=300, seed=0).run(model, x, y)
    assert result.flags["zero_gradient_share"] == 1.0
    # the white-box stages find only what their random starts hit; Square finds more
    assert result.flags["black_box_gain"] > 0.1
    report = evaluate_robustness(model, (x, y), attacks=[AutoAttack(0.2, steps=10, square_steps=300, seed=0)],
                                 large_eps=None)
    failed = {c.name for c in report.checks if not c.passed}
    assert "AutoAttack: input gradients not zero" in failed
    assert "AutoAttack: black-box stage adds nothing" in failed


def test_the_zero_gradient_check_is_the_input_gradient_and_one_compiled_program_on_jax(trained_cnn, digits,
                                                                                       jax_compiles):
    """``run``'s zero-gradient check takes the cross-entropy's input gradient of the
    logits: it equals a float64 finite difference of that loss through a NumPy copy of
    the network, and on JAX it is one compiled program — eagerly, JAX compiled each
    primitive of the forward and backward passes as a program of its own (51 for a
    5-layer CNN in ``AutoAttack.run``; each dearer on a GPU)."""
    x, y = digits
    x, y = x[:7], y[:7]  # a batch size no other test compiles
    inputs, labels = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    attack = AutoAttack(0.1, version="fast", steps=5)
    with jax_compiles() as compiled:
        grad = np.asarray(keras.ops.convert_to_numpy(attack._gradients(trained_cnn)(inputs, labels)), "float64")
    if keras.backend.backend() == "jax":
        assert len(compiled) == 1

    kernel, bias, weights, offsets = (np.asarray(w, "float64") for w in trained_cnn.get_weights())

    def loss(images):  # Conv2D(8, 3, relu) - Flatten - Dense(10), then the summed cross-entropy
        windows = np.lib.stride_tricks.sliding_window_view(images, (3, 3), axis=(1, 2))  # n, 6, 6, 1, 3, 3
        hidden = np.maximum(np.einsum("nijcab,abcf->nijf", windows, kernel) + bias, 0.0)
        logits = hidden.reshape(len(images), -1) @ weights + offsets
        shifted = logits - logits.max(axis=1, keepdims=True)
        return np.sum(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(y)), y])

    direction = np.random.default_rng(0).normal(size=x.shape)
    h = 1e-6
    slope = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    assert np.sum(grad * direction) == pytest.approx(slope, rel=1e-4)


def test_flags_a_randomised_model(trained_cnn, digits):
    x, y = digits
    result = AutoAttack(0.05, version="fast", steps=5).run(with_front(trained_cnn, NoisyInference()), x, y)
    assert result.flags["randomized"]
    deterministic = AutoAttack(0.05, version="fast", steps=5).run(trained_cnn, x, y)
    assert not deterministic.flags["randomized"]


def test_flags_a_randomised_model_and_the_rand_version_attacks_it_with_eot(trained_cnn, digits):
    """The report's randomisation check fails for the standard versions, naming the
    "rand" version, and passes for it; "rand" runs APGD-CE and APGD-DLR, 20 passes
    per gradient."""
    x, y = digits
    noisy = with_front(trained_cnn, NoisyInference())
    rand = AutoAttack(0.05, version="rand", steps=5, seed=0)
    assert rand.stage_names == ["APGD-CE-5", "APGD-DLR-5"]
    assert [stage.eot_iter for stage in rand.stages] == [20, 20]
    checks = {}
    for attack in (AutoAttack(0.05, version="fast", steps=5), rand):
        report = evaluate_robustness(noisy, (x[:40], y[:40]), attacks=[attack], large_eps=None)
        (checks[attack.version],) = [c for c in report.checks if c.name.startswith("AutoAttack: forward pass")]
    assert not checks["fast"].passed and "version='rand'" in checks["fast"].detail
    assert checks["rand"].passed


def test_draws_make_random_layers_draw_anew_repeatably_and_leave_the_model_alone():
    """An attack's forward pass given a draw number: the noise layer draws anew for
    each number (independent N(0, 0.3²) draws), the same again for the same number,
    and the model's own generator state is untouched."""
    model = keras.Sequential([keras.Input((2000,)), NoisyInference()])
    scores = ClassifierView(model, from_logits=True).scores
    state = keras.ops.convert_to_numpy(model.layers[0].seed.state.value).copy()
    zeros = keras.ops.zeros((1, 2000))
    noise = [np.asarray(keras.ops.convert_to_numpy(scores(zeros, draw)))[0] for draw in (None, 0, 1, 2, 3)]
    again = np.asarray(keras.ops.convert_to_numpy(scores(zeros, 2)))[0]
    np.testing.assert_array_equal(again, noise[3])
    for sample in noise:  # standard error of the std: 0.3 / √4000 ≈ 0.005
        assert abs(sample.std() - 0.3) < 0.02 and abs(sample.mean()) < 0.03
    correlations = np.corrcoef(np.stack(noise))[np.triu_indices(len(noise), 1)]
    assert np.abs(correlations).max() < 0.1  # standard error 1/√2000 ≈ 0.022
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[0].seed.state.value), state)


def test_eot_gradient_is_the_mean_of_the_passes_gradients():
    """With eot_iter = 5, the gradient at APGD's k-th point is the mean of the
    cross-entropy's gradients of 5 passes with fresh draws: for logits W(x + n) + b
    each is Wᵀ(softmax(z) − e_y), computed here from each pass's logits z; the loss
    and logits returned are the last pass's."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), NoisyInference(), keras.layers.Dense(4)])
    kernel = np.asarray(keras.ops.convert_to_numpy(model.layers[-1].kernel), "float64")
    x = np.random.default_rng(0).uniform(size=(3, 6)).astype("float32")
    y = np.array([0, 1, 3])
    scores = ClassifierView(model, from_logits=True).scores
    attack = APGD(0.1, eot_iter=5)
    first, k = 7, 2
    expected = attack._expected_loss_and_grad(attack._loss_function(scores), first)
    target = keras.ops.zeros((3,), "int32")
    loss, z, grad = (np.asarray(keras.ops.convert_to_numpy(v), "float64") for v in expected(
        keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y, "int32"), target, k))
    passes = [np.asarray(keras.ops.convert_to_numpy(scores(keras.ops.convert_to_tensor(x), first + k * 5 + e)),
                         "float64") for e in range(5)]
    assert np.ptp([p[0, 0] for p in passes]) > 1e-3  # the passes differ
    def ce_gradient(logits):
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return (p - np.eye(4)[y]) @ kernel.T
    np.testing.assert_allclose(grad, np.mean([ce_gradient(p) for p in passes], axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(z, passes[-1], rtol=1e-5, atol=1e-6)
    last = passes[-1] - passes[-1].max(axis=1, keepdims=True)
    np.testing.assert_allclose(loss, np.log(np.exp(last).sum(axis=1)) - last[np.arange(3), y], rtol=1e-5, atol=1e-6)


def test_eot_breaks_more_of_a_randomised_model_than_single_passes(trained_cnn, digits):
    """Against ``RandomPhase``, APGD averaging each gradient over 20 passes leaves fewer
    examples robust (accuracy averaged over 20 fresh passes) than APGD on one pass per
    gradient: lower by more than the spread over seeds plus two examples (measured:
    0.84–0.86 against 0.67–0.70, spread ≤ 0.03, on torch and TensorFlow)."""
    x, y = digits
    model = with_front(trained_cnn, RandomPhase())

    def robust(adversarial):
        return float(np.mean([accuracy(model, adversarial, y) for _ in range(20)]))

    single, averaged = ([robust(APGD(0.1, steps=20, eot_iter=eot, seed=seed)(model, x, y)) for seed in (0, 1)]
                        for eot in (1, 20))
    spread = max(np.ptp(single), np.ptp(averaged)) + 2 / len(y)
    assert np.mean(averaged) < np.mean(single) - spread, (single, averaged)


class SoftmaxByOps(keras.layers.Layer):
    """A softmax no check can recognise as one."""

    def call(self, x):
        return keras.ops.softmax(x)


def test_softmax_outputs_are_attacked_through_their_logits(trained_cnn, digits):
    x, y = digits
    with_softmax = keras.Sequential([keras.Input((8, 8, 1))] + trained_cnn.layers + [keras.layers.Softmax()])
    on_logits = APGDT(0.1, n_target_classes=2, steps=20, seed=0)(trained_cnn, x, y)
    on_softmax = APGDT(0.1, n_target_classes=2, steps=20, seed=0)(with_softmax, x, y)
    np.testing.assert_array_equal(on_softmax, on_logits)
    hidden = keras.Sequential([keras.Input((8, 8, 1))] + trained_cnn.layers + [SoftmaxByOps()])
    attack = AutoAttack(0.1, version="fast", steps=10, seed=0)
    flagged = attack.run(hidden, x[:40], y[:40])
    assert flagged.flags["probabilities"]  # attacked as logits: the check says so
    told = AutoAttack(0.1, version="fast", steps=10, seed=0, from_logits=False).run(hidden, x[:40], y[:40])
    assert not told.flags["probabilities"]  # attacked through log p
    plain = attack.run(trained_cnn, x[:40], y[:40])
    assert told.robust_accuracy == pytest.approx(plain.robust_accuracy, abs=1 / 40)


# ---------------------------------------------------------------- the report, inputs, configs


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="on torch, tests/test_torch_backend.py runs AutoAttack against torchattacks' "
                           "ensemble and in a report (keeps the torch half within its time)")
def test_evaluate_robustness_reports_autoattack_and_its_stages(trained_cnn, digits):
    x, y = digits
    attack = AutoAttack(0.1, steps=20, square_steps=200, seed=0)
    report = evaluate_robustness(trained_cnn, (x, y), attacks=[PGD(0.1, steps=20, seed=0), attack],
                                 large_eps=None)
    row = next(r for r in report.rows if r["family"] == "AutoAttack")
    assert row["accuracy"] == pytest.approx(attack.run(trained_cnn, x, y).robust_accuracy, abs=1 / len(x))
    assert row["accuracy"] <= report.accuracy("PGD", 0.1) + 1 / len(x)
    assert set(row["stages"]) == set(attack.stage_names)
    assert report.all_checks_passed, report.checks
    assert "AutoAttack" in report.to_markdown()
    # batches from tf.data (what data.load returns), one-hot labels
    tf = pytest.importorskip("tensorflow")
    batches = tf.data.Dataset.from_tensor_slices((x, np.eye(10, dtype="float32")[y])).batch(64)
    streamed = evaluate_robustness(trained_cnn, batches, attacks=[attack], large_eps=None)
    assert streamed.accuracy("AutoAttack", 0.1) == pytest.approx(row["accuracy"], abs=1 / len(x))


def test_bad_inputs_say_what_is_wrong(trained_cnn, digits):
    x, y = digits
    with pytest.raises(ValueError, match="integer classes"):
        APGD(0.1)(trained_cnn, x[:4], np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="outside the declared input range"):
        AutoAttack(0.1)(trained_cnn, x[:4] * 255, y[:4])
    with pytest.raises(ValueError, match="version"):
        AutoAttack(0.1, version="plus")
    with pytest.raises(ValueError, match="3×3"):
        flat = keras.Sequential([keras.Input((32,)), keras.layers.Dense(4)])
        Square(0.5, norm=2)(flat, np.full((2, 32), 0.5, "float32"), [0, 1])
    binary = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="at least 3 classes"):
        APGD(0.1, loss="dlr")(binary, np.full((2, 3), 0.5, "float32"), [0, 1])


@pytest.mark.parametrize("attack", [APGDT(0.1, steps=7, seed=3), Square(0.2, steps=9, seed=1),
                                    AutoAttack(0.3, norm=2, version="fast", seed=2), APGD(0.1, eot_iter=4),
                                    AutoAttack(0.1, version="rand")], ids=repr)
def test_configs_round_trip(attack):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(clone) is type(attack) and clone.get_config() == attack.get_config()
    assert clone.name == attack.name


def test_apgd_targeted_is_deprecated_for_apgdt_which_runs_the_same_attack(trained_cnn, digits):
    """``APGD(targeted=True)`` (y the true labels, unlike ``targeted`` elsewhere) warns
    and names ``APGDT``; the two give the same points. ``APGDT`` refuses ``targeted=True``."""
    x, y = digits
    with pytest.warns(LowRankWarning, match=r"APGD\(targeted=True\) is deprecated.*APGDT"):
        old = APGD(0.1, targeted=True, n_target_classes=2, steps=10, seed=0)
    new = APGDT(0.1, n_target_classes=2, steps=10, seed=0)
    assert old.name == new.name and new.apgd_targeted and new.loss == "dlr"
    np.testing.assert_array_equal(np.asarray(old(trained_cnn, x, y)), np.asarray(new(trained_cnn, x, y)))
    with pytest.raises(ValueError, match="APGDT takes no `targeted=True`"):
        APGDT(0.1, targeted=True)


@pytest.mark.parametrize("kind,old,new,default", [
    (APGD, "n_iter", "steps", 100), (APGDT, "n_iter", "steps", 100), (FAB, "n_iter", "steps", 100),
    (Square, "n_queries", "steps", 5000), (AutoAttack, "n_iter", "steps", 100),
    (AutoAttack, "n_queries", "square_steps", 5000)])
def test_former_names_of_the_step_counts_warn_and_give_the_same_attack(kind, old, new, default):
    """``steps`` names every attack's iteration count; ``n_iter``/``n_queries`` still work
    for one release, with a warning, in the constructor and in a saved config."""
    seed = {} if kind is FAB else {"seed": 0}  # FAB draws nothing
    with pytest.warns(LowRankWarning, match=rf"{kind.__name__}\({old}=...\) is deprecated.*{new}="):
        former = kind(0.1, **{old: 7}, **seed)
    current = kind(0.1, **{new: 7}, **seed)
    assert getattr(former, new) == 7 != default and former.get_config() == current.get_config()
    config = {(old if key == new else key): value for key, value in current.get_config().items()}
    with pytest.warns(LowRankWarning, match="deprecated"):
        assert kind.from_config(config).get_config() == current.get_config()
    with pytest.raises(ValueError, match=f"pass `{new}` only"):
        kind(0.1, **{old: 7, new: 8})


# ---------------------------------------------------------------- FAB-T against the authors' code


def reference_projection_linf(t, w, b):
    """The authors' ``projection_linf`` (fab_projections.py), ported literally to numpy."""
    t, w, b = t.astype(np.float64), w.astype(np.float64).copy(), b.astype(np.float64).copy()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w *= sign[:, None]
    b *= sign
    a = (w < 0).astype(float)
    d = (a - t) * (w != 0)
    p = a - t * (2 * a - 1)
    indp = np.argsort(p, axis=1, kind="stable")
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp[:, ::-1]
    ws = np.take_along_axis(w, indp2, 1)
    bs2 = -ws * np.take_along_axis(d, indp2, 1)
    s = np.cumsum(np.abs(ws), axis=1)
    sb = np.cumsum(bs2, axis=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * np.take_along_axis(p, indp[:, :1], 1)[:, 0]
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (b - b2 <= 0)
    lb = np.zeros(c2.sum())
    ub = np.full(c2.sum(), w.shape[1] - 1.0)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        counter4 = np.floor((lb + ub) / 2)
        counter2 = counter4.astype(int)[:, None]
        indcurr = np.take_along_axis(indp_, indp_.shape[1] - 1 - counter2, 1)
        b2 = np.take_along_axis(sb_, counter2, 1) - np.take_along_axis(s_, counter2, 1) * np.take_along_axis(
            p_, indcurr, 1)
        c = b_ - b2[:, 0] > 0
        lb, ub = np.where(c, counter4, lb), np.where(c, ub, counter4)
    lb = lb.astype(int)
    if c_l.any():
        lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    rows = np.flatnonzero(c2)
    lmbd = np.maximum((b[c2] - sb[rows, lb]) / (-s[rows, lb]), 0)[:, None]
    d[c2] = np.minimum(lmbd, d[c2]) * a[c2] + np.maximum(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0)


def test_fab_projection_equals_the_authors(rng):
    from keras_lowrank.robustness.attacks import project_to_hyperplane_linf

    t = rng.uniform(0, 1, (200, 30))
    w = rng.normal(size=(200, 30)) * (rng.uniform(size=(200, 30)) > 0.1)  # some zero weights
    b = (w * t).sum(1) + rng.normal(size=200) * rng.choice([0.1, 1.0, 30.0], 200)  # near, far, unreachable
    got = keras.ops.convert_to_numpy(project_to_hyperplane_linf(t.astype("float32"), w.astype("float32"),
                                                                 b.astype("float32")))
    expected = reference_projection_linf(t, w, b)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    reached = np.abs((w * (t + expected)).sum(1) - b) < 1e-6
    assert 0 < reached.sum() < len(b)  # both cases present
    assert np.all(t + got >= -1e-6) and np.all(t + got <= 1 + 1e-6)


def reference_projection_l2(t, w, b):
    """The authors' ``projection_l2`` (fab_projections.py), ported literally to numpy."""
    t, w, b = t.astype(np.float64), w.astype(np.float64).copy(), b.astype(np.float64)
    c = (w * t).sum(1) - b
    ind2 = c < 0
    w[ind2] *= -1
    c[ind2] *= -1
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(np.maximum(t / w, (t - 1) / w), -1e12, 1e12)
    r[np.abs(w) < 1e-8] = 1e12
    r[r == -1e12] *= -1
    indr = np.argsort(r, axis=1, kind="stable")
    rs = np.take_along_axis(r, indr, 1)
    rs2 = np.pad(rs[:, 1:], ((0, 0), (0, 1)))
    rs[rs == 1e12] = 0
    rs2[rs2 == 1e12] = 0
    w3s = np.take_along_axis(w ** 2, indr, 1)
    w5 = w3s.sum(1, keepdims=True)
    ws = w5 - np.cumsum(w3s, axis=1)
    d = -(r * w) * (np.abs(w) > 1e-8)
    s = np.concatenate([(-w5[:, 0] * rs[:, 0])[:, None], np.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, :1]], 1)
    c4 = s[:, 0] + c < 0
    c3 = (d * w).sum(1) + c > 0
    c2 = ~c4 & ~c3
    lb = np.zeros(c2.sum())
    ub = np.full(c2.sum(), w.shape[1] - 1.0)
    s_, c_ = s[c2], c[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        counter4 = np.floor((lb + ub) / 2)
        c3_ = np.take_along_axis(s_, counter4.astype(int)[:, None], 1)[:, 0] + c_ > 0
        lb, ub = np.where(c3_, counter4, lb), np.where(c3_, ub, counter4)
    lb = lb.astype(int)
    if c4.any():
        d[c4] = -(c[c4] / w5[c4, 0])[:, None] * w[c4]
    if c2.any():
        rows = np.flatnonzero(c2)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = (s[rows, lb] + c[c2]) / ws[rows, lb] + rs[rows, lb]
        alpha[ws[rows, lb] == 0] = 0
        c5 = (alpha[:, None] > r[c2]).astype(float)
        d[c2] = d[c2] * c5 - alpha[:, None] * w[c2] * (1 - c5)
    return d * (np.abs(w) > 1e-8)


def test_fab_l2_projection_equals_the_authors_and_a_qp_solver(rng):
    from scipy.optimize import minimize

    from keras_lowrank.robustness.attacks import project_to_hyperplane_l2

    t = rng.uniform(0, 1, (300, 30))
    w = rng.normal(size=(300, 30)) * (rng.uniform(size=(300, 30)) > 0.1)  # some zero weights
    b = (w * t).sum(1) + rng.normal(size=300) * rng.choice([0.1, 1.0, 3.0, 30.0], 300)
    got = keras.ops.convert_to_numpy(project_to_hyperplane_l2(t.astype("float32"), w.astype("float32"),
                                                               b.astype("float32"))).astype(np.float64)
    expected = reference_projection_l2(t, w, b)
    np.testing.assert_allclose(got, expected, atol=5e-5)
    reached = np.abs((w * (t + expected)).sum(1) - b) < 1e-6
    assert 30 < reached.sum() < len(b) - 30  # reachable and unreachable hyperplanes, and
    saturated = ((np.abs(t + expected) < 1e-9) | (np.abs(t + expected - 1) < 1e-9)).any(1) & reached
    assert saturated.sum() > 30  # reached with coordinates at the box
    assert np.all(t + got >= -1e-6) and np.all(t + got <= 1 + 1e-6)
    # independent truth: the smallest ‖d‖₂ with w·(t + d) = b inside the box, by SLSQP
    for i in np.flatnonzero(reached)[:12]:
        ti, wi, bi = t[i], w[i], b[i]
        on_plane = {"type": "eq", "fun": lambda d, ti=ti, wi=wi, bi=bi: wi @ (ti + d) - bi,
                    "jac": lambda d, wi=wi: wi}
        solved = minimize(lambda d: d @ d, np.zeros(30), jac=lambda d: 2 * d, method="SLSQP",
                          bounds=list(zip(-ti, 1 - ti)), constraints=[on_plane],
                          options={"ftol": 1e-12, "maxiter": 500})
        assert solved.success
        np.testing.assert_allclose(got[i], solved.x, atol=2e-4)


def reference_fab_targeted(model, x, y, rank, n_iter, alpha_max=0.1, eta=1.05, beta=0.9, norm="inf"):
    """The authors' FAB-T ``attack_single_run`` (fab_base.py; no random start) on the
    tanh network, float64, gradients by hand."""
    w1, b1, w2, b2 = (np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in model.weights)
    n = len(x)
    x0 = x.reshape(n, -1).astype(np.float64)
    rows = np.arange(n)

    def logits(a):
        return np.tanh(a @ w1 + b1) @ w2 + b2

    target = np.argsort(logits(x0), axis=1)[:, -rank]
    x1, adv, res2 = x0.copy(), x0.copy(), np.full(n, 1e10)
    for _ in range(n_iter):
        h = np.tanh(x1 @ w1 + b1)
        z = h @ w2 + b2
        df = z[rows, target] - z[rows, y]
        dz = np.eye(z.shape[1])[target] - np.eye(z.shape[1])[y]
        dg = ((dz @ w2.T) * (1 - h ** 2)) @ w1.T
        b = -df + (dg * x1).sum(1)
        project = reference_projection_linf if norm == "inf" else reference_projection_l2
        size = (lambda v: np.abs(v).max(1)) if norm == "inf" else (lambda v: np.sqrt((v ** 2).sum(1)))
        d3 = project(np.concatenate([x1, x0]), np.concatenate([dg, dg]), np.concatenate([b, b]))
        d1, d2 = d3[:n], d3[n:]
        a1 = np.maximum(size(d1), 1e-8)[:, None]
        a2 = np.maximum(size(d2), 1e-8)[:, None]
        alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0), alpha_max)
        x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha, 0, 1)
        is_adv = logits(x1).argmax(1) != y
        t = size(x1 - x0)
        closer = is_adv & (t < res2)
        adv[closer], res2[closer] = x1[closer], t[closer]
        x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta
    return adv.reshape(x.shape), res2


@pytest.mark.parametrize("norm", ["inf", 2])
def test_fab_equals_the_authors_loop(rng, norm):
    from keras_lowrank.robustness.attacks import FAB

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="tanh",
                                                                      bias_initializer="random_normal"),
                              keras.layers.Dense(6, bias_initializer="random_normal")])
    x = rng.uniform(0.2, 0.8, (40, 12)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    attack = FAB(0.3, norm=norm, steps=20)
    scores = ClassifierView(model).scores
    for rank in (2, 3):
        found, distance = attack._single_run(scores, keras.ops.convert_to_tensor(x), y, rank)
        expected, expected_distance = reference_fab_targeted(model, x, y, rank, 20, norm=norm)
        found, distance = keras.ops.convert_to_numpy(found), keras.ops.convert_to_numpy(distance)
        np.testing.assert_array_equal(distance < 1e9, expected_distance < 1e9)
        assert (expected_distance < 1e9).mean() > 0.5  # most found
        ok = expected_distance < 1e9
        # Equal paths give equal points. A path can part at a near-tie of a discrete choice
        # (which hyperplane, which step is best so far) when the two implementations round
        # differently: on one CPU all 40 agree, on an AVX-512 one (other oneDNN/XLA kernels)
        # 1 of 40 ended 11 % farther. At most 1 in 20 may part; each that does must still
        # be a point of the other class at its reported distance.
        same = np.all(np.abs(found - expected) <= 1e-4, axis=1) & (np.abs(distance - expected_distance) <= 1e-4)
        assert same[ok].mean() >= 0.95, (rank, np.flatnonzero(ok & ~same))
        parted = ok & ~same
        if parted.any():
            order = "inf" if norm == "inf" else 2
            np.testing.assert_allclose(np.linalg.norm(found[parted] - x[parted], ord=order, axis=1),
                                       distance[parted], rtol=1e-4)
            assert np.all(np.argmax(model.predict(found[parted], verbose=0), axis=1) != y[parted])


def test_autoattack_on_fewer_than_four_classes_names_the_stages_that_apply():
    x, y = unit_data(n=8, classes=3)
    from keras_lowrank.robustness import APGD, AutoAttack, Square

    for version in ("standard", "fast"):
        with pytest.raises(ValueError, match=rf"AutoAttack \({version}\) needs a model of at least 4 classes"
                                             r".*has 3.*Square"):
            AutoAttack(0.1, version=version).run(linear_classifier(classes=3), x, y)
    # "rand" (APGD-CE, APGD-DLR) runs on 3 classes, not on 2
    AutoAttack(0.1, version="rand", steps=2).run(linear_classifier(classes=3), x, y)
    with pytest.raises(ValueError, match=r"AutoAttack \(rand\) needs a model of at least 3 classes.*has 2"):
        AutoAttack(0.1, version="rand", steps=2).run(linear_classifier(classes=2), *unit_data(n=8, classes=2))
    # what the message proposes runs on that model
    report = evaluate_robustness(linear_classifier(classes=3), (x, y), large_eps=None,
                                 attacks=[APGD(0.1, loss="ce", steps=2), Square(0.1, steps=2)])
    assert [r["family"] for r in report.rows] == ["clean", "APGD", "Square"]

