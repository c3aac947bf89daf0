import json
import re

import keras
import numpy as np
import pytest
from models import digits_cnn as small_cnn

from keras_lowrank import data
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel, evaluate_robustness
from keras_lowrank.robustness._checks import masking_checks as _checks

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = data.load_digits_arrays("train")
    model = small_cnn()
    model.compile("adam", CE)
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    x_test, y_test = data.load_digits_arrays("test")
    return model, x_test[:200], y_test[:200]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x)), -1) == y))


@pytest.mark.parametrize("attack", [FGSM(0.1), FGSM(0.8, norm=2),
                                    PGD(0.1, steps=4, random_start=False)])
def test_evaluate_under_attack_equals_attacking_each_batch(trained, attack):
    model, x, y = trained
    wrapper = PerturbedModel(model, attack)
    wrapper.compile(loss=CE, metrics=["accuracy"])
    got = wrapper.evaluate(x, y, batch_size=50, verbose=0, return_dict=True)["accuracy"]
    adversarial = np.concatenate([keras.ops.convert_to_numpy(attack(model, x[i:i + 50], y[i:i + 50]))
                                  for i in range(0, len(x), 50)])
    assert got == pytest.approx(accuracy(model, adversarial, y), abs=1e-6)


def test_one_hot_labels_and_zero_noise_give_clean_accuracy(trained):
    model, x, y = trained
    wrapper = PerturbedModel(model, GaussianNoise(0.0))
    wrapper.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                    metrics=["categorical_accuracy"])
    got = wrapper.evaluate(x, np.eye(10)[y], verbose=0, return_dict=True)
    assert got["categorical_accuracy"] == pytest.approx(accuracy(model, x, y), abs=1e-6)


def test_adversarial_fit_trains_the_wrapped_model_on_the_attacked_inputs(trained):
    """One SGD step of ``PerturbedModel(student, PGD).fit`` is the step plain Keras takes
    on the PGD examples of the same weights (made here beforehand, deterministic PGD),
    not the one it takes on the clean batch: the two updates differ by far more than
    float32 round-off separates the first pair."""
    model, x, y = trained
    attack = PGD(0.1, steps=3, random_start=False)
    xb, yb = x[:50], y[:50]
    keras.utils.set_random_seed(1)
    student = small_cnn()
    start = [w.copy() for w in student.get_weights()]
    adversarial = keras.ops.convert_to_numpy(attack(student, xb, yb))
    wrapper = PerturbedModel(student, attack)
    wrapper.compile(keras.optimizers.SGD(0.5), CE)
    history = wrapper.fit(xb, yb, epochs=1, batch_size=50, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    def one_plain_step(inputs):
        twin = small_cnn()
        twin.set_weights(start)
        twin.compile(keras.optimizers.SGD(0.5), CE)
        twin.fit(inputs, yb, epochs=1, batch_size=50, shuffle=False, verbose=0)
        return twin.get_weights()

    on_attacked, on_clean = one_plain_step(adversarial), one_plain_step(xb)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(on_attacked, start))
    apart = max(float(np.abs(a - b).max()) for a, b in zip(on_attacked, on_clean))
    error = max(float(np.abs(a - b).max()) for a, b in zip(student.get_weights(), on_attacked))
    assert moved > 1e-3 and apart > 1e-2 * moved  # the step matters, and the attack changes it
    assert error < 1e-3 * apart, (error, apart)


def test_adversarial_fit_with_validation_data(trained):
    """``fit(validation_data=…)`` raised an AttributeError (Keras 3's CallbackList has no
    ``append``); the validation rows are the attacked accuracy, as ``evaluate`` gives it;
    and an input out of range in a later training batch is still an error when
    validation (which resets the count) runs before the epoch's end."""
    model, x, y = trained
    keras.utils.set_random_seed(1)
    student = small_cnn()
    wrapper = PerturbedModel(student, FGSM(0.1))
    wrapper.compile("adam", CE, metrics=["accuracy"])
    history = wrapper.fit(x[:100], y[:100], epochs=1, batch_size=50, verbose=0,
                          validation_data=(x[100:], y[100:]))
    after = wrapper.evaluate(x[100:], y[100:], batch_size=50, verbose=0, return_dict=True)
    assert history.history["val_accuracy"][0] == pytest.approx(after["accuracy"], abs=1e-6)
    assert history.history["val_accuracy"][0] == pytest.approx(
        accuracy(student, keras.ops.convert_to_numpy(FGSM(0.1)(student, x[100:], y[100:])), y[100:]), abs=1e-6)
    late = x[:100].copy()
    late[60:] = late[60:] * 255  # the second batch of 50: outside [0, 1]
    for kwargs in ({"validation_data": (x[100:], y[100:])}, {}):
        with pytest.raises(ValueError, match=r"outside the declared input range"):
            wrapper.fit(late, y[:100], epochs=1, batch_size=50, verbose=0, shuffle=False, **kwargs)


def test_wrong_perturbation_is_named():
    with pytest.raises(ValueError, match="`perturbation`"):
        PerturbedModel(keras.Sequential([keras.layers.Dense(2)]), 0.1)
    with pytest.raises(ValueError, match="`sigma`"):
        GaussianNoise(-1.0)


def test_report_flags_gradient_masking():
    # Rounding the input kills the input gradient: attacks cannot move, so even
    # eps = 0.5 leaves accuracy high. The report must say so.
    x, y = data.load_digits_arrays("test")
    inputs = keras.Input((8, 8, 1))
    rounded = keras.layers.Lambda(lambda t: keras.ops.round(t * 4) / 4)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(rounded)))
    model.compile("adam", CE)
    model.fit(x, y, epochs=20, verbose=0)
    report = evaluate_robustness(model, _dataset(x, y),
                                 attacks=[FGSM(0.1), PGD(0.1, steps=5)])
    assert not report.all_checks_passed
    failed = [c.name for c in report.checks if not c.passed]
    assert "large ε=0.5 drives accuracy near 0" in failed
    # Zero gradients: FGSM leaves x unchanged, so it equals clean accuracy.
    assert report.accuracy("FGSM", 0.1) == report.clean_accuracy
    assert "WARNING" in str(report) and "**FAIL**" in report.to_markdown()


def _dataset(x, y):
    tf = pytest.importorskip("tensorflow")  # tf.data input; a JAX-only install skips

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(128)


def test_report_rows_json_and_plot(trained, tmp_path):
    model, x, y = trained
    report = evaluate_robustness(model, _dataset(x, y), attacks=[FGSM(0.05), FGSM(0.1)],
                                 noise_sigmas=[0.2])
    assert [r["name"] for r in report.rows] == [
        "clean", "FGSM L∞ ε=0.05", "FGSM L∞ ε=0.1", "Gaussian σ=0.2",
        "PGD-20 L∞ ε=0.5 (large-ε probe)"]
    assert report.clean_accuracy == pytest.approx(accuracy(model, x, y), abs=1e-6)
    assert report.num_examples == 200
    assert json.loads(report.to_json(tmp_path / "r.json")) == report.as_dict()
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_checks_catch_each_violation():
    def row(family, size, acc, norm="inf"):
        return {"name": f"{family}{size}", "family": family, "norm": norm, "size": size,
                "accuracy": acc}

    clean = row("clean", 0.0, 0.9, None)
    good = [clean, row("FGSM", 0.1, 0.5), row("FGSM", 0.2, 0.3), row("PGD", 0.1, 0.4),
            row("PGD", 0.2, 0.1)]
    assert all(c.passed for c in _checks(good, None, 100))
    rising = [clean, row("FGSM", 0.1, 0.5), row("FGSM", 0.2, 0.6)]
    assert [c.passed for c in _checks(rising, None, 100)] == [True, False]
    weak_pgd = [clean, row("FGSM", 0.1, 0.5), row("PGD", 0.1, 0.7)]
    assert not _checks(weak_pgd, None, 100)[-1].passed
    above_clean = [clean, row("FGSM", 0.1, 0.95)]
    assert not _checks(above_clean, None, 100)[0].passed
    # an attack row is one with a threat model's norm, whatever its family's name
    assert not _checks([clean, row("APGDT", 0.1, 0.95)], None, 100)[0].passed
    assert _checks([clean, row("gaussian", 0.1, 0.95, None)], None, 100)[0].passed
    # One example of 450 is tolerated, two are not, with accuracies as Keras' float32
    # metrics give them (float32(357/450) − float32(356/450) > 1/450 in float64).
    def acc(k):
        return float(np.float32(k / 450))

    assert acc(357) - acc(356) > 1 / 450
    for extra, passed in ((1, True), (2, False)):
        pgd_vs_fgsm = [row("clean", 0.0, acc(401), None), row("FGSM", 0.05, acc(356)),
                       row("PGD", 0.05, acc(356 + extra))]
        fgsm_rising = [row("clean", 0.0, acc(401), None), row("FGSM", 0.05, acc(356)),
                       row("FGSM", 0.1, acc(356 + extra))]
        above = [row("clean", 0.0, acc(356), None), row("FGSM", 0.05, acc(356 + extra))]
        assert _checks(pgd_vs_fgsm, None, 450)[-1].passed is passed
        assert _checks(fgsm_rising, None, 450)[-1].passed is passed
        assert _checks(above, None, 450)[0].passed is passed


def test_attacks_on_a_model_that_adds_losses():
    # LowRankProjection adds losses in call; the attack's forward passes (inside
    # PGD's loop, inside the train step) must neither leak nor double them.
    from keras_lowrank import LowRankProjection

    x, y = data.load_digits_arrays("test")
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(0)
    base = small_cnn()  # the LR layer after the features, as in Sanyal et al.
    model = keras.Sequential([keras.Input((8, 8, 1)), *base.layers[:-1], LowRankProjection(4, name="low_rank"),
                              base.layers[-1]])
    model.compile("adam", CE)
    clean_loss = model.evaluate(x, y, verbose=0)
    wrapper = PerturbedModel(model, PGD(0.0, steps=2, random_start=False))
    wrapper.compile("adam", CE)
    # eps = 0 leaves x unchanged: the wrapper's loss (task + LR losses) is the clean one.
    assert wrapper.evaluate(x, y, verbose=0) == pytest.approx(clean_loss, rel=1e-5)
    wrapper.fit(x, y, epochs=1, batch_size=32, verbose=0)
    adv = PGD(0.1, steps=2)(model, x, y)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(adv)))
    assert int(keras.ops.convert_to_numpy(model.get_layer("low_rank").steps)) == 2


def test_report_corruption_and_dataset_rows(trained):
    from keras_lowrank.robustness import Corruption

    model, x, y = trained
    blurred = np.asarray(keras.ops.convert_to_numpy(Corruption("gaussian_blur", 5)(None, x)))
    report = evaluate_robustness(
        model, _dataset(x, y), corruptions=[Corruption("contrast", 1), Corruption("gaussian_blur", 5)],
        datasets={"pre-blurred": _dataset(blurred, y)}, large_eps=None, clip=None)
    names = [r["name"] for r in report.rows]
    assert names == ["clean", "contrast 1", "gaussian_blur 5", "pre-blurred"]
    # the in-graph corruption and the same corruption applied beforehand agree
    assert report.accuracy("corruption:gaussian_blur", 5) == pytest.approx(
        report.rows[-1]["accuracy"], abs=1e-6)
    assert report.accuracy("corruption:gaussian_blur", 5) == pytest.approx(
        accuracy(model, blurred, y), abs=1e-6)
    assert report.mean_corruption_accuracy() == pytest.approx(
        (report.rows[1]["accuracy"] + report.rows[2]["accuracy"]) / 2)


def batches(x, y):
    tf = pytest.importorskip("tensorflow")  # tf.data input; a JAX-only install skips

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(50)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_inputs_outside_the_declared_range_are_an_error_not_silently_clipped(trained, jit_compile):
    model, x, y = trained
    standardised = (x - 0.5) / 0.3  # a common preprocessing outside the default clip=(0, 1)
    wrapper = PerturbedModel(model, FGSM(0.1))
    wrapper.compile(loss=CE, metrics=["accuracy"], jit_compile=jit_compile)
    for run in (lambda: wrapper.evaluate(standardised, y, batch_size=50, verbose=0),
                lambda: wrapper.fit(standardised, y, batch_size=50, verbose=0),
                lambda: wrapper.predict(standardised, batch_size=50, verbose=0),
                lambda: evaluate_robustness(model, batches(standardised, y), attacks=[FGSM(0.1)])):
        with pytest.raises(ValueError, match=r"outside the declared input range clip=\(0.0, 1.0\)"):
            run()
    # Declaring the range makes the same data valid; in-range data after an error is fine.
    ok = PerturbedModel(model, FGSM(0.1, clip=(float(standardised.min()), float(standardised.max()))))
    ok.compile(loss=CE, metrics=["accuracy"], jit_compile=jit_compile)
    ok.evaluate(standardised, y, batch_size=50, verbose=0)
    wrapper.evaluate(x, y, batch_size=50, verbose=0)


def test_a_perturbation_of_ones_own_names_its_row_and_declares_its_input_range(trained):
    """A ``Perturbation`` subclass says what its report row is (``describe``) and which
    inputs it accepts (``input_range``, by default its ``clip``): the report and
    ``PerturbedModel`` ask it, not a list of the library's classes."""
    from keras_lowrank.robustness import Perturbation

    class Shift(Perturbation):
        def __init__(self, delta, high=1.0):
            self.delta, self.high = delta, high

        def perturb_in_graph(self, model, x, y=None):
            return keras.ops.clip(x + self.delta, 0.0, 1.0)

        def get_config(self):
            return {"delta": self.delta, "high": self.high}

        def describe(self):
            return "shift", "inf", self.delta

        def input_range(self):  # no ``clip``: the range is declared here alone
            return 0.0, self.high

    model, x, y = trained
    report = evaluate_robustness(model, (x, y), attacks=[Shift(0.0), Shift(0.3)], large_eps=None)
    assert [(r["family"], r["norm"], r["size"]) for r in report.rows[1:]] == [("shift", "inf", 0.0),
                                                                               ("shift", "inf", 0.3)]
    assert report.rows[1]["accuracy"] == report.clean_accuracy  # a zero shift is the clean input
    wrapper = PerturbedModel(model, Shift(0.1))
    wrapper.compile(loss=CE, metrics=["accuracy"])
    with pytest.raises(ValueError, match=r"outside the declared input range clip=\(0.0, 1.0\)"):
        wrapper.evaluate(x + 2.0, y, batch_size=50, verbose=0)
    wide = PerturbedModel(model, Shift(0.1, high=3.0))
    wide.compile(loss=CE, metrics=["accuracy"])
    wide.evaluate(x + 2.0, y, batch_size=50, verbose=0)


def test_the_pair_data_load_returns_is_a_clear_error_where_the_dataset_is_meant(trained):
    pytest.importorskip("tensorflow")  # data.load builds tf.data pipelines
    from keras_lowrank import analysis

    model = trained[0]
    pair = data.load("digits", "test", batch_size=100)
    wrapper = PerturbedModel(model, FGSM(0.1))
    wrapper.compile(loss=CE, metrics=["accuracy"])
    for argument, run in (
            ("data", lambda: evaluate_robustness(model, pair, attacks=[FGSM(0.1)])),
            ("datasets['c']", lambda: evaluate_robustness(model, pair[0], datasets={"c": pair})),
            ("x", lambda: wrapper.evaluate(pair, verbose=0)),
            ("x", lambda: wrapper.fit(pair, verbose=0)),
            ("data", lambda: analysis.cka_map(model, pair)),
            ("data", lambda: analysis.class_selectivity(model, pair))):
        with pytest.raises(ValueError, match=re.escape(f"`{argument}` is the (dataset, info) pair")):
            run()
    dataset, _ = pair  # what the message says to do works
    assert 0.0 <= evaluate_robustness(model, dataset, large_eps=None).rows[0]["accuracy"] <= 1.0


def test_array_pairs_are_scored_exactly_whatever_their_length(rng):
    """(x, y) arrays are padded to equal batches (one compiled step on JAX) with
    weight-0 copies: every row's accuracy is still k / n of the real examples."""
    from keras_lowrank.robustness import FGSM, evaluate_robustness

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    for n in (7, 256, 300, 513):
        x = rng.uniform(size=(n, 5)).astype("float32")
        y = rng.integers(0, 3, size=n)
        clean = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
        adversarial = np.asarray(FGSM(0.05)(model, x, y))
        attacked = np.mean(np.argmax(model.predict(adversarial, verbose=0), -1) == y)
        report = evaluate_robustness(model, (x, y), attacks=[FGSM(0.05)], large_eps=None)
        assert report.num_examples == n
        assert report.clean_accuracy == pytest.approx(clean, abs=1e-6)
        assert report.accuracy("FGSM", 0.05) == pytest.approx(attacked, abs=1e-6)


def test_a_report_builds_no_optimizer(trained, monkeypatch):
    """Keras' evaluate builds a compiled model's optimizer — with compile's default,
    RMSprop, a slot per weight of the attacked model, compiled shape by shape on JAX
    (MobileNetV2: 28 programs, 0.6 s of a 5.7 s report). The report's wrappers only
    evaluate: no optimizer is built, and the model's weights stay its own."""
    model, x, y = trained
    built = []
    original = keras.optimizers.Optimizer.build
    monkeypatch.setattr(keras.optimizers.Optimizer, "build",
                        lambda self, variables: built.append(type(self).__name__) or original(self, variables))
    before = [np.copy(w) for w in model.get_weights()]
    evaluate_robustness(model, (x[:32], y[:32]), attacks=[PGD(0.1, steps=2)], noise_sigmas=(0.1,),
                        large_eps=None)
    assert built == []
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def _fresh_accuracy(model, perturbation, x, y):
    wrapper = PerturbedModel(model, perturbation)
    wrapper.compile(loss=CE, metrics=["accuracy"])
    return wrapper.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["accuracy"]


def _fresh_dataset_accuracy(model, perturbation, dataset):
    wrapper = PerturbedModel(model, perturbation)
    wrapper.compile(loss=CE, metrics=["accuracy"])
    return wrapper.evaluate(dataset, verbose=0, return_dict=True)["accuracy"]


def test_a_report_compiles_one_step_for_clean_noise_fgsm_and_pgd_and_scores_each_row_as_a_fresh_wrapper(
        trained, monkeypatch):
    """Clean, noise, FGSM and PGD rows of one norm run in one shared ``Sweep`` step
    (settings as variables); other kinds share one step per kind across ε. Each row
    still equals evaluating its own object afresh on the same batches — the settings
    are read at run time on both backends, not traced as constants; FGSM's step is
    not projected; a PGD-20 probe runs in the step traced for PGD-3; PGD rows of 1, 2
    and 3 restarts share a step built for 3; and every row draws what a fresh object
    with its seed draws, batch after batch (common random numbers)."""
    from keras_lowrank.robustness import SPSA, _evaluator

    model, x, y = trained
    dataset = batches(x, y)  # 4 batches: the random draws must follow a fresh object's, batch after batch
    created = []

    class Counting(PerturbedModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append((type(self.perturbation).__name__, getattr(self.perturbation, "norm", None)))

    monkeypatch.setattr(_evaluator, "PerturbedModel", Counting)
    sweep = (0.05, 0.1, 0.2)
    attacks = ([FGSM(e) for e in sweep] + [PGD(e, steps=3, seed=1) for e in sweep]
               + [PGD(0.1, steps=5, step_size=0.02, seed=1), PGD(0.1, steps=2, random_start=False),
                  PGD(0.1, steps=2, restarts=3, seed=5), PGD(0.2, steps=2, restarts=2, seed=5),
                  FGSM(0.8, norm=2), PGD(1.0, steps=3, norm=2, seed=4), PGD(0.6, steps=2, norm=2, seed=4),
                  PGD(1.0, steps=2, norm=2, restarts=2, seed=6),
                  SPSA(0.1, steps=2, samples=4, seed=2), SPSA(0.2, steps=2, samples=4, seed=2)])
    result = evaluate_robustness(model, dataset, attacks=attacks, noise_sigmas=[0.1, 0.3], seed=3)
    assert sorted(created) == [("SPSA", "inf"), ("Sweep", "2"), ("Sweep", "inf")]
    perturbations = ([None] + attacks + [GaussianNoise(0.1, seed=3), GaussianNoise(0.3, seed=3)]
                     + [PGD(0.5, steps=20, seed=3)])
    got = [row["accuracy"] for row in result.rows]
    expected = [_fresh_dataset_accuracy(model, p, dataset) if p else accuracy(model, x, y) for p in perturbations]
    assert got == pytest.approx(expected, abs=1e-6)
    assert len(set(got[1:4])) > 1 and len(set(got[4:7])) > 1  # the sizes did change the result
    assert len(set(got[-3:-1])) > 1
    assert [row["name"] for row in result.rows[1:-1]] == [p.name for p in perturbations[1:-1]]


def _with_head(model, head):
    """``model`` (logits) as is, with its last Dense applying the softmax, or followed
    by a ``Softmax`` layer: the same function, other outputs."""
    if head == "logits":
        return model
    if head == "softmax layer":
        return keras.Sequential([model, keras.layers.Softmax()])

    def clone(layer):
        config = layer.get_config()
        if layer is model.layers[-1]:
            config["activation"] = "softmax"
        return type(layer).from_config(config)

    twin = keras.models.clone_model(model, clone_function=clone)
    twin.set_weights(model.get_weights())
    return twin


@pytest.mark.parametrize("head", ["logits", "dense softmax", "softmax layer", "logits, classes unknown"])
def test_a_reports_step_outputs_what_the_model_outputs_at_each_rows_point(trained, head, monkeypatch):
    """The shared step takes the model's outputs from its loop's last forward pass
    (K + 1 passes, the last without a gradient) instead of a forward pass of its own:
    Keras' loss and accuracy of each row — clean, noise, FGSM, PGD with and without
    restarts — equal a fresh wrapper's, whose outputs are ``model(x_adv)``. For a
    model ending in a softmax (attacked through its logits) that means the last
    layer's softmax of them: the cross-entropy would differ on logits. A model that
    cannot say its number of classes gets the loop of K passes, then ``model``."""
    from keras_lowrank.robustness import _gradients
    from keras_lowrank.robustness._evaluator import Evaluator
    from keras_lowrank.robustness._sweep import Identity

    traced = []
    own = _gradients.Oracle.outputs_and_grad
    monkeypatch.setattr(_gradients.Oracle, "outputs_and_grad", lambda *a: traced.append(1) or own(*a))
    if head == "logits, classes unknown":
        monkeypatch.setattr(PerturbedModel, "_num_classes", lambda self, shape: None)
    model, x, y = trained
    model = _with_head(model, head.split(",")[0])
    from_logits = head.startswith("logits")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    dataset = batches(x, y)
    rows = [Identity(), GaussianNoise(0.2, seed=3), FGSM(0.1), PGD(0.1, steps=3, seed=1),
            PGD(0.2, steps=2, restarts=2, seed=5)]
    evaluator = Evaluator(model, from_logits, "auto", 0, rows)
    for row in rows:
        shared = evaluator._ready_wrapper(row, False).evaluate(dataset, verbose=0, return_dict=True)
        fresh = PerturbedModel(model, row)
        fresh.compile(optimizer=None, loss=loss, weighted_metrics=["accuracy"])
        expected = fresh.evaluate(dataset, verbose=0, return_dict=True)
        assert shared["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6), row
        assert shared["loss"] == pytest.approx(expected["loss"], rel=1e-5), row
    assert bool(traced) == (head != "logits, classes unknown")  # whence the outputs came


def test_a_reports_shared_step_checks_each_rows_own_input_range(trained):
    """The clean row declares no range, an attack row its own: out-of-range data
    passes the first and is refused by the second, named."""
    model, x, y = trained
    shifted = x + 1.0  # in [1, 2]
    with pytest.raises(ValueError, match=r"clip=\(0.0, 1.0\) of FGSM\(eps=0.1"):
        evaluate_robustness(model, (shifted, y), attacks=[FGSM(0.1)], large_eps=None)
    report = evaluate_robustness(model, (shifted, y), attacks=[FGSM(0.1, clip=(1.0, 2.0))],
                                 noise_sigmas=[0.1], clip=None, large_eps=None)
    assert report.clean_accuracy == pytest.approx(accuracy(model, shifted, y), abs=1e-6)
    infinite = x.copy()
    infinite[3, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="1 input.* NaN or infinite"):
        evaluate_robustness(model, (infinite, y), noise_sigmas=[0.1], clip=None, large_eps=None)


def test_subclasses_that_do_not_declare_their_sizes_are_not_shared(trained):
    """A subclass may read ε on the host (here, to choose its step count): it gets a
    wrapper of its own per row, with ε a float."""
    model, x, y = trained

    class Adaptive(PGD):
        def _attack(self, oracle, x, y, noise):
            self.steps = 1 if self.eps < 0.1 else 3  # host-side use of eps
            return super()._attack(oracle, x, y, noise)

    attacks = [Adaptive(0.05, steps=3, random_start=False), Adaptive(0.2, steps=3, random_start=False)]
    result = evaluate_robustness(model, (x, y), attacks=attacks, large_eps=None)
    expected = [_fresh_accuracy(model, a, x, y) for a in attacks]
    assert [row["accuracy"] for row in result.rows[1:]] == pytest.approx(expected, abs=1e-6)


class _Opaque(keras.layers.Layer):
    """The identity through a host callback: no input gradient can be traced on JAX
    (a pure_callback has no JVP); on TF a numpy_function's gradient is zero."""

    def call(self, x):
        if keras.backend.backend() == "jax":
            import jax

            return jax.pure_callback(np.asarray, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        import tensorflow as tf

        out = tf.numpy_function(np.asarray, [x], tf.float32)
        out.set_shape(x.shape)
        return out


def test_a_report_without_gradient_attacks_does_not_need_the_input_gradient(trained):
    """Clean and noise rows share the gradient attacks' step only when the report has
    such attacks: without them a model whose gradient cannot be traced is still scored."""
    model, x, y = trained
    opaque = keras.Sequential([keras.Input(x.shape[1:]), _Opaque(), model])
    report = evaluate_robustness(opaque, (x, y), noise_sigmas=[0.1], seed=3, large_eps=None)
    assert report.clean_accuracy == pytest.approx(accuracy(model, x, y), abs=1e-6)
    assert report.accuracy("gaussian", 0.1) == pytest.approx(
        _fresh_accuracy(model, GaussianNoise(0.1, seed=3), x, y), abs=1e-6)
