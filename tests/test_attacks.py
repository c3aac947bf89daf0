"""Attacks against closed-form numpy attacks (any backend) and cleverhans (TF)."""

import keras
import numpy as np
import pytest
from keras import ops
from models import linear_classifier, unit_data

from keras_lowrank import data
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel, evaluate_robustness

pytestmark = pytest.mark.torch  # in the torch half too (make test-torch)


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits_arrays("test")
    return x[:120], y[:120]


def softmax_regression(seed=0, activation=None):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation=activation,
                                                 bias_initializer="random_normal")])
    return model


def numpy_gradient(model, x, y, targeted=False):
    """d CE(softmax(xW + b), y) / dx = (softmax − onehot(y)) Wᵀ, in float64."""
    w, b = (np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in model.weights)
    flat = x.reshape(len(x), -1).astype(np.float64)
    z = flat @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(10)[y]) @ w.T
    return (-g if targeted else g).reshape(x.shape)


def numpy_fgsm(model, x, y, eps, norm, targeted=False):
    g = numpy_gradient(model, x, y, targeted)
    if norm == "inf":
        step = np.sign(g)
    else:
        step = g / np.sqrt(np.maximum(1e-12, (g**2).sum(axis=(1, 2, 3), keepdims=True)))
    return np.clip(x + eps * step, 0, 1)


def numpy_pgd(model, x, y, eps, step_size, steps, norm, targeted=False):
    adv = x.astype(np.float64)
    for _ in range(steps):
        adv = numpy_fgsm(model, adv, y, step_size, norm, targeted)
        eta = adv - x
        if norm == "inf":
            eta = np.clip(eta, -eps, eps)
        else:
            length = np.sqrt(np.maximum(1e-12, (eta**2).sum(axis=(1, 2, 3), keepdims=True)))
            eta = eta * np.minimum(1.0, eps / length)
        adv = np.clip(x + eta, 0, 1)
    return adv


@pytest.mark.parametrize("norm,eps", [("inf", 0.1), (2, 0.8)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_closed_form(digits, norm, eps, targeted):
    x, y = digits
    model = softmax_regression()
    labels = (y + 3) % 10 if targeted else y
    got = np.asarray(keras.ops.convert_to_numpy(
        FGSM(eps, norm=norm, targeted=targeted)(model, x, labels)))
    expected = numpy_fgsm(model, x, labels, eps, "inf" if norm == "inf" else 2, targeted)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("norm,eps,step", [("inf", 0.1, 0.02), (2, 1.0, 0.3)])
def test_pgd_without_random_start_matches_closed_form(digits, norm, eps, step):
    x, y = digits
    model = softmax_regression()
    got = np.asarray(keras.ops.convert_to_numpy(
        PGD(eps, step_size=step, steps=7, norm=norm, random_start=False)(model, x, y)))
    expected = numpy_pgd(model, x, y, eps, step, 7, "inf" if norm == "inf" else 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_probabilities_model_gives_the_logits_attack(digits):
    x, y = digits
    logits, probs = softmax_regression(), softmax_regression(activation="softmax")
    probs.set_weights(logits.get_weights())
    a = keras.ops.convert_to_numpy(FGSM(0.5, norm=2)(logits, x, y))
    b = keras.ops.convert_to_numpy(FGSM(0.5, norm=2)(probs, x, y))
    np.testing.assert_allclose(a, b, atol=1e-4)


SOFTMAX_HEADS = {"activation='softmax'": lambda: [keras.layers.Dense(10, activation="softmax")],
                 "Activation('softmax')": lambda: [keras.layers.Dense(10), keras.layers.Activation("softmax")],
                 "Softmax()": lambda: [keras.layers.Dense(10), keras.layers.Softmax()],
                 "nested model": lambda: [keras.Sequential([keras.layers.Dense(10, activation="softmax")])]}


@pytest.mark.parametrize("head", SOFTMAX_HEADS)
def test_confident_softmax_model_is_attacked_through_its_logits(digits, head):
    # Where float32 rounds the probabilities to 0 or 1, the cross-entropy of the
    # probabilities has a zero input gradient (Keras clips them): the attack must use
    # the logits, i.e. equal the attack on the model without its softmax.
    x, y = digits
    logits = softmax_regression()
    logits.set_weights([40 * w for w in logits.get_weights()])
    probs = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), *SOFTMAX_HEADS[head]()])
    probs.set_weights(logits.get_weights())
    before = keras.ops.convert_to_numpy(probs(x))
    p_label = before[np.arange(len(y)), y]
    assert np.mean((p_label < 1e-7) | (p_label > 1 - 1e-7)) > 0.5  # where Keras clips
    from keras_lowrank.robustness._classifier import outputs_logits

    assert not outputs_logits(probs)
    for attack in (FGSM(0.1), FGSM(1.0, norm=2), PGD(0.1, step_size=0.02, steps=5, random_start=False)):
        expected = keras.ops.convert_to_numpy(attack(logits, x, y))
        assert np.abs(expected - x).max() > 0.01  # the logits' attack moves the inputs
        np.testing.assert_allclose(keras.ops.convert_to_numpy(attack(probs, x, y)), expected, atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probs(x)), before)  # softmax back


@pytest.mark.parametrize("norm,eps", [("inf", 0.1), (2, 1.0)])
def test_pgd_random_start_and_restarts_stay_in_ball(digits, norm, eps):
    x, y = digits
    model = softmax_regression()
    adv = np.asarray(keras.ops.convert_to_numpy(
        PGD(eps, steps=5, norm=norm, restarts=3, seed=1)(model, x, y)))
    eta = (adv - x).reshape(len(x), -1)
    size = np.abs(eta).max(1) if norm == "inf" else np.linalg.norm(eta, axis=1)
    assert size.max() <= eps + 1e-5 and adv.min() >= 0 and adv.max() <= 1


def test_restarts_keep_the_worst_case_per_example(digits):
    x, y = digits
    model = softmax_regression()
    loss = lambda adv: keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        y, model(adv), from_logits=True))
    one = [loss(PGD(0.05, steps=2, restarts=1, seed=s)(model, x, y)) for s in range(3)]
    many = loss(PGD(0.05, steps=2, restarts=8, seed=0)(model, x, y))
    assert many.mean() >= max(o.mean() for o in one) - 1e-6


def test_targeted_pgd_reaches_targets(digits):
    x, y = digits
    model = softmax_regression()
    targets = (y + 1) % 10
    adv = PGD(1.0, step_size=0.1, steps=20, targeted=True)(model, x, targets)
    hit = np.mean(np.argmax(keras.ops.convert_to_numpy(model(adv)), -1) == targets)
    assert hit > 0.95


def test_attack_sees_weights_changed_after_compiling(digits):
    x, y = digits
    model = softmax_regression()
    attack = FGSM(0.1)
    attack(model, x, y)
    model.set_weights([-w for w in model.get_weights()])
    got = keras.ops.convert_to_numpy(attack(model, x, y))
    np.testing.assert_allclose(got, numpy_fgsm(model, x, y, 0.1, "inf"), atol=1e-5)


def test_bad_arguments_are_named(digits):
    x, y = digits
    model = softmax_regression()
    for build, match in [(lambda: FGSM(-0.1), "`eps`"), (lambda: FGSM(0.1, norm=1), "`norm`"),
                         (lambda: PGD(0.1, steps=0), "`steps`"),
                         (lambda: PGD(0.1, step_size=0), "`step_size`"),
                         (lambda: PGD(0.1, restarts=0), "`restarts`"),
                         (lambda: FGSM(0.1, clip=(1, 0)), "`clip`")]:
        with pytest.raises(ValueError, match=match):
            build()
    with pytest.raises(ValueError, match="`x` lies in"):
        FGSM(0.1)(model, x * 255, y)
    with pytest.raises(ValueError, match="`y` must hold 120"):
        FGSM(0.1)(model, x, y[:5])
    with pytest.raises(ValueError, match=r"`y` must be integer classes in \[0, 10\)"):
        FGSM(0.1)(model, x, y + 10)
    with pytest.raises(ValueError, match="targeted attack needs `y`"):
        FGSM(0.1, targeted=True)(model, x)
    regression = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="classes ≥ 2"):
        FGSM(0.1)(regression, x, y)


def test_loop_form_depends_on_model_size_and_not_the_result(rng, monkeypatch):
    """Small models unroll short PGD/SPSA loops on TF, large ones keep one compiled
    loop (issue 21: unrolled graphs of large models cost 5–10× to compile); the
    adversarials are the same either way."""
    from keras_lowrank.robustness import SPSA
    from keras_lowrank.robustness.attacks import base as attacks

    small = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    deep = keras.Sequential([keras.Input((6,))] + [keras.layers.Dense(6, activation="tanh") for _ in range(40)]
                            + [keras.layers.Dense(3)])
    tf_backend = keras.backend.backend() == "tensorflow"
    assert attacks.unrolls(small, 10) is tf_backend and not attacks.unrolls(small, 21)
    assert not attacks.unrolls(deep, 10)
    x = rng.uniform(0.2, 0.8, (16, 6)).astype("float32")
    y = rng.integers(0, 3, 16)
    looped = [np.asarray(keras.ops.convert_to_numpy(a(deep, x, y)))
              for a in (PGD(0.1, steps=5, seed=3), SPSA(0.1, steps=3, samples=4, seed=3))]
    monkeypatch.setattr(attacks, "_MAX_UNROLLED_LAYERS", 10 ** 6)
    monkeypatch.setattr(attacks, "_MAX_UNROLLED_STEPS", 20)
    assert attacks.unrolls(deep, 10)
    unrolled = [np.asarray(keras.ops.convert_to_numpy(a(deep, x, y)))
                for a in (PGD(0.1, steps=5, seed=3), SPSA(0.1, steps=3, samples=4, seed=3))]
    for a, b in zip(looped, unrolled):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_attacks_called_directly_refuse_nan_and_infinite_inputs():
    """``attack(model, x, y)`` on a batch holding NaN or ±∞ returned NaN "adversarial
    examples" without a word (the report and PerturbedModel caught it, the direct call
    did not), also with clip=None; the error counts the examples, as NumPy does."""
    from keras_lowrank.robustness import APGD, FAB, SPSA, AutoAttack, Square

    x, y = unit_data(n=12, classes=5)
    model = linear_classifier(classes=5)
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


def test_one_example_without_its_batch_axis_is_named():
    x, y = unit_data(n=4)
    with pytest.raises(ValueError, match=r"`x` must be a batch.*\(None, 8\); got shape \(8,\).*x\[None\]"):
        PGD(0.1, steps=2)(linear_classifier(), x[0], y[:1])
    assert _np(PGD(0.1, steps=2)(linear_classifier(), x[:1], y[:1])).shape == (1, 8)


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


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))
