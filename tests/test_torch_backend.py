"""Keras' torch backend: every public robustness entry point runs, exports go through
TensorFlow, the command line takes ``--backend torch``; APGD and AutoAttack against
torchattacks on the very same weights (a Keras model on torch *is* a torch.nn.Module).

Part of the torch half of the suite (``make test-torch``); skipped on the other backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from randomised import RandomPhase

from keras_lowrank import data
from keras_lowrank.compression import export_compressed, to_low_rank
from keras_lowrank.layers import LowRankProjection
from keras_lowrank.robustness import (
    APGD,
    APGDT,
    FAB,
    FGSM,
    PGD,
    SPSA,
    AutoAttack,
    GaussianNoise,
    PerturbedModel,
    Square,
    all_corruptions,
    evaluate_robustness,
)

pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch backend's own tests")]


def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="features"),
        keras.layers.Dense(10, name="logits"),
    ])


@pytest.fixture(scope="module")
def trained():
    """A digits CNN trained here on torch; 100 test digits."""
    keras.utils.set_random_seed(0)
    x, y = data.load_digits_arrays("train")
    model = _cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    x_test, y_test = data.load_digits_arrays("test")
    return model, x_test[:100], y_test[:100]


def _predict(model, x):
    return np.argmax(keras.ops.convert_to_numpy(model(x, training=False)), axis=-1)


def _theirs(model):
    """The Keras model as torchattacks expects a network: NCHW images in, logits out."""
    import torch

    class NCHW(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 2, 3, 1))

    return NCHW(model).eval()


def _nchw(x):
    import torch

    return torch.tensor(x).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("norm", ["inf", 2])
def test_every_attack_stays_in_its_ball_and_lowers_accuracy(trained, norm):
    model, x, y = trained
    eps = 0.1 if norm == "inf" else 0.8
    clean = np.mean(_predict(model, x) == y)
    attacks = [FGSM(eps, norm=norm), PGD(eps, norm=norm, steps=10, seed=0), APGD(eps, norm=norm, steps=20, seed=0),
               APGDT(eps, norm=norm, steps=20, seed=0), FAB(eps, norm=norm, steps=10),
               Square(eps, norm=norm, steps=200, seed=0)]
    if norm == "inf":
        attacks.append(SPSA(eps, steps=5, samples=16, seed=0))
    for attack in attacks:
        adversarial = np.asarray(keras.ops.convert_to_numpy(attack(model, x, y)))
        delta = (adversarial - x).reshape(len(x), -1)
        size = np.abs(delta).max(axis=1) if norm == "inf" else np.sqrt((delta.astype("float64") ** 2).sum(axis=1))
        assert size.max() <= eps * (1 + 1e-5) + 1e-6, attack.name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, attack.name
        assert np.mean(_predict(model, adversarial) == y) < clean, attack.name


def test_apgd_ce_equals_torchattacks_within_the_seeds_spread(trained):
    """APGD-CE, 100 iterations, on the same weights and digits: robust accuracy of ours
    and torchattacks' over two seeds each; they may differ by no more than the larger
    spread of the two over seeds, plus one example."""
    import torch
    import torchattacks

    model, x, y = trained
    network, images, labels = _theirs(model), _nchw(x), torch.tensor(y).long()
    ours, theirs = [], []
    for seed in (0, 1):
        ours.append(np.mean(_predict(model, keras.ops.convert_to_numpy(APGD(0.1, steps=100, seed=seed)(model, x, y)))
                            == y))
        adversarial = torchattacks.APGD(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=seed,
                                        loss="ce")(images, labels)
        with torch.no_grad():
            theirs.append((network(adversarial).argmax(1) == labels).float().mean().item())
    spread = max(np.ptp(ours), np.ptp(theirs)) + 1 / len(y)
    assert abs(np.mean(ours) - np.mean(theirs)) <= spread + 1e-9, (ours, theirs)
    assert np.mean(ours) < np.mean(_predict(model, x) == y)  # the attack does something


def _their_autoattack(model, x, y, steps=100, queries=5000):
    """torchattacks' standard ensemble built from its parts at our budgets (APGD-CE,
    APGD-T × 9 targets, FAB-T × 9, Square; its own ``AutoAttack`` runs 10 steps:
    torchattacks issue #196), each stage on what the earlier left robust, as AutoAttack
    does. Returns (robust flags, robust accuracy clean and after each stage)."""
    import torch
    import torchattacks

    network, images, labels = _theirs(model), _nchw(x), torch.tensor(y).long()
    common = dict(norm="Linf", eps=0.1, n_restarts=1, seed=0)
    stages = [torchattacks.APGD(network, steps=steps, loss="ce", **common),
              torchattacks.APGDT(network, steps=steps, n_classes=10, **common),
              torchattacks.FAB(network, steps=steps, multi_targeted=True, n_classes=10, **common),
              torchattacks.Square(network, n_queries=queries, **common)]
    with torch.no_grad():
        robust = (network(images).argmax(1) == labels).numpy()
    accuracy = [robust.mean()]
    for stage in stages:
        rows = np.flatnonzero(robust)
        if len(rows):
            adversarial = stage(images[rows], labels[rows])
            with torch.no_grad():
                robust[rows] = (network(adversarial).argmax(1) == labels[rows]).numpy()
        accuracy.append(robust.mean())
    return robust, accuracy


def test_autoattack_leaves_the_robust_examples_torchattacks_ensemble_does(trained):
    """AutoAttack (standard, L∞) against torchattacks' ensemble built from its parts at
    the same budgets (APGD-CE 100, APGD-T 100 × 9 targets, FAB-T 100 × 9, Square 5000;
    its own ``AutoAttack`` runs 10 steps: torchattacks issue #196), each stage on what the
    earlier left robust. Random starts differ between the two, so a few examples may
    fall differently (1 of 200 here); the robust sets must agree on all but 3 of 100."""
    model, x, y = trained
    result = AutoAttack(0.1, seed=0).run(model, x, y)
    robust, _ = _their_autoattack(model, x, y)
    assert np.sum(robust != result.robust) <= 3, (robust.mean(), result.robust_accuracy)
    assert result.robust_accuracy < result.clean_accuracy


def test_autoattack_rand_equals_torchattacks_eot_stages_within_the_seeds_spread(trained):
    """AutoAttack's "rand" version (APGD-CE then APGD-DLR, each gradient the mean of 20
    passes) against torchattacks' APGD with ``eot_iter=20``, the same two stages built
    from its parts, on a randomised model (``RandomPhase`` in front of the CNN), robust
    accuracy averaged over 20 fresh passes; two seeds each. They may differ by no more
    than the larger spread over seeds plus two examples; and EOT must matter here (one
    pass per gradient leaves clearly more robust)."""
    import torch
    import torchattacks

    base, x, y = trained
    model = keras.Sequential([keras.Input((8, 8, 1)), RandomPhase()] + base.layers)
    network, images, labels = _theirs(model), _nchw(x), torch.tensor(y).long()

    def robust(adversarial):
        return float(np.mean([np.mean(_predict(model, adversarial) == y) for _ in range(20)]))

    ours, theirs, single = [], [], []
    for seed in (0, 1):
        ours.append(robust(AutoAttack(0.1, version="rand", steps=30, seed=seed).run(model, x, y).x_adv))
        adversarial = images.clone()
        with torch.no_grad():
            alive = np.flatnonzero((network(images).argmax(1) == labels).numpy())
        for loss in ("ce", "dlr"):
            attack = torchattacks.APGD(network, norm="Linf", eps=0.1, steps=30, n_restarts=1, seed=seed,
                                       loss=loss, eot_iter=20)
            found = attack(images[alive], labels[alive])
            with torch.no_grad():
                fooled = (network(found).argmax(1) != labels[alive]).numpy()
            adversarial[alive[fooled]] = found[fooled]
            alive = alive[~fooled]
        theirs.append(robust(adversarial.detach().permute(0, 2, 3, 1).numpy()))
        single.append(robust(APGD(0.1, steps=30, seed=seed)(model, x, y)))
    spread = max(np.ptp(ours), np.ptp(theirs)) + 2 / len(y)
    assert abs(np.mean(ours) - np.mean(theirs)) <= spread, (ours, theirs)
    assert np.mean(ours) < np.mean(single) - spread, (ours, single)


def test_on_a_masked_gradient_square_breaks_what_the_gradient_stages_cannot_as_in_torchattacks(trained):
    """Input quantisation (round to eighths: its gradient is zero everywhere) in front
    of the CNN masks every gradient: APGD-CE, APGD-T and FAB-T break only what their
    random starts happen to, Square breaks much more, and AutoAttack flags it. Stage by
    stage, ours and torchattacks' ensemble (same budgets: 20 iterations, 1000 queries) on
    the same weights agree to within 3 of 50 examples, and so do the final robust sets
    (1 of 50 differs here; their random draws differ)."""
    cnn, x, y = trained
    x, y = x[:50], y[:50]
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: keras.ops.round(t * 8) / 8), cnn])
    result = AutoAttack(0.1, steps=20, square_steps=1000, seed=0).run(model, x, y)
    ours = [result.clean_accuracy] + list(result.stage_accuracy.values())
    robust, theirs = _their_autoattack(model, x, y, steps=20, queries=1000)
    assert np.max(np.abs(np.array(ours) - np.array(theirs))) <= 3 / 50 + 1e-9, (ours, theirs)
    for counts in (ours, theirs):  # the gradient stages barely move; Square breaks ≥ 10 examples more
        assert counts[0] - counts[3] <= 3 / 50 + 1e-9 and counts[3] - counts[4] >= 10 / 50, counts
    assert np.sum(robust != result.robust) <= 3
    assert result.flags["zero_gradient_share"] == 1.0 and result.flags["black_box_gain"] >= 0.2


def test_autoattack_fast_and_l2(trained):
    model, x, y = trained
    for attack in (AutoAttack(0.1, version="fast", seed=0), AutoAttack(0.8, norm=2, version="fast", seed=0)):
        result = attack.run(model, x[:40], y[:40])
        assert result.robust_accuracy <= result.clean_accuracy
        assert result.flags["max_perturbation"] <= attack.eps * (1 + 1e-5) + 1e-6


class _AutogradSpy(keras.layers.Layer):
    """The identity; records, per call on real tensors, whether torch records autograd."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs):
        import torch

        if inputs.device.type != "meta":  # not Keras' symbolic build
            self.seen.append(torch.is_grad_enabled())
        return inputs


def test_gradient_free_loops_record_no_autograd_graph(trained):
    """Square's 5000 eager iterations each kept their forward pass alive through the
    model's weights (13 GB on 200 digits) while torch recorded autograd in them: no
    attack's forward pass may record it but the one whose input gradient it takes, and
    an adversarial ``fit`` records it for the training pass alone."""
    model, x, y = trained
    spy = _AutogradSpy()
    spied = keras.Sequential([keras.Input((8, 8, 1))] + model.layers[:-1] + [spy, model.layers[-1]])
    Square(0.1, steps=30, seed=0)(spied, x[:20], y[:20])
    assert len(spy.seen) > 30 and not any(spy.seen)
    spy.seen.clear()
    PGD(0.1, steps=3, seed=0)(spied, x[:20], y[:20])
    assert spy.seen.count(True) == 3  # the three gradients
    spy.seen.clear()
    adversarial = PerturbedModel(spied, Square(0.1, steps=30, seed=0))
    adversarial.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    adversarial.fit(x[:20], y[:20], epochs=1, batch_size=20, verbose=0)
    assert len(spy.seen) > 30 and spy.seen.count(True) == 1


def test_perturbed_model_evaluates_and_trains_adversarially(trained):
    model, x, y = trained
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    clean = np.mean(_predict(model, x) == y)
    noisy = PerturbedModel(model, GaussianNoise(0.1, seed=0))
    noisy.compile(loss=loss, metrics=["accuracy"])
    assert 0 < noisy.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] <= 1
    attack = PGD(0.1, steps=3, random_start=False)  # deterministic: the same examples as the attack alone
    wrapper = PerturbedModel(model, attack)
    wrapper.compile(loss=loss, metrics=["accuracy"])
    accuracy = wrapper.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["accuracy"]
    alone = np.mean(_predict(model, keras.ops.convert_to_numpy(attack(model, x, y))) == y)
    assert accuracy == pytest.approx(alone, abs=1e-6) and accuracy < clean
    student = _cnn()
    student.set_weights(model.get_weights())
    adversarial = PerturbedModel(student, PGD(0.1, steps=3, seed=0))
    adversarial.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    before = [w.copy() for w in student.get_weights()]
    history = adversarial.fit(x, y, epochs=1, batch_size=50, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, b) for a, b in zip(before, student.get_weights()))


def test_evaluate_robustness_report_with_sweeps_and_checks(trained):
    model, x, y = trained
    report = evaluate_robustness(model, (x, y), attacks=[FGSM(0.1), PGD(0.1, steps=5, seed=0)],
                                 noise_sigmas=[0.1], corruptions=all_corruptions(severities=(1,), names=["contrast"]))
    clean = np.mean(_predict(model, x) == y)
    assert report.clean_accuracy == pytest.approx(clean, abs=1e-6)
    fgsm = np.mean(_predict(model, keras.ops.convert_to_numpy(FGSM(0.1)(model, x, y))) == y)  # deterministic
    assert report.accuracy("FGSM", 0.1) == pytest.approx(fgsm, abs=1e-6)
    assert report.accuracy("PGD", 0.1) < clean
    assert report.checks and all(check.passed for check in report.checks), report.checks  # masking checks ran


def test_converted_and_exported_models_are_torch_modules_of_their_own_weights(trained):
    """On torch a Keras model is a torch.nn.Module whose parameters Keras lists once, when
    it is built: after to_low_rank's and compressed_model's layer swaps they listed the
    replaced layers' weights (model.to(device), state_dict and torch.onnx saw those)."""
    from keras_lowrank.compression import compressed_model

    model, x, _ = trained
    low = to_low_rank(model, rank=4)
    for converted in (low, compressed_model(low)):
        values = {id(v.value) for v in converted.variables}
        assert {id(p) for p in converted.parameters()} == values
        assert sum(p.numel() for p in converted.parameters()) == converted.count_params() < model.count_params()


def test_export_writes_a_savedmodel_through_tensorflow_that_computes_the_model(trained, tmp_path):
    pytest.importorskip("tensorflow")
    model, x, _ = trained
    small = to_low_rank(model, rank=4)
    written = export_compressed(small, str(tmp_path / "out"), formats=("keras", "saved_model"))
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
            "np.save(sys.argv[3], m.serve(np.load(sys.argv[2])).numpy())")
    done = subprocess.run([sys.executable, "-c", code, written["saved_model"], str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = keras.ops.convert_to_numpy(small(x))
    # float32 sums of ≤ 8·8·32 products in another order: a few ulps of the logits' scale
    scale = np.abs(expected).max()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5 * scale)


def test_cli_compresses_and_evaluates_on_torch(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "cnn.keras")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}  # --backend torch must switch it
    done = subprocess.run([sys.executable, "-m", "keras_lowrank", "compress", str(tmp_path / "cnn.keras"), "--data",
                           "digits", "--rank", "4", "--finetune-epochs", "1", "--limit", "200", "--backend", "torch",
                           "--formats", "keras", "saved_model", "onnx", "--output", str(tmp_path / "small"), "--quiet"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert report["meta"]["backend"] == "torch"
    assert [c["format"] for c in report["reload_checks"]] == ["keras", "saved_model", "onnx"]
    assert all(c["passed"] for c in report["reload_checks"])
    done = subprocess.run([sys.executable, "-m", "keras_lowrank", "evaluate", str(tmp_path / "cnn.keras"), "--data",
                           "digits", "--limit", "100", "--attacks", "fgsm:0.1", "pgd:0.1", "--backend",
                           "torch", "--output", str(tmp_path / "robust"), "--quiet"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "robust" / "report.json").read_text())
    assert report["meta"]["backend"] == "torch"


def test_square_writes_its_windows_as_slices_eagerly_equal_to_the_compiled_masks(trained, monkeypatch):
    """On torch Square writes each window as a slice, its corners computed on the host;
    TF and JAX build the window's mask in the graph. Both give the same points, bit for
    bit, on the same draws."""
    from keras_lowrank.robustness.attacks import square

    model, x, y = trained
    eager = np.asarray(keras.ops.convert_to_numpy(Square(0.1, steps=300, seed=0)(model, x, y)))
    monkeypatch.setattr(square, "holds_values", lambda tensor: False)
    masks = np.asarray(keras.ops.convert_to_numpy(Square(0.1, steps=300, seed=0)(model, x, y)))
    np.testing.assert_array_equal(eager, masks)
    assert np.any(eager != x)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_loop_in_torch_ops_equals_the_keras_ops_loop_to_the_bit(trained, monkeypatch, loss):
    """On torch APGD's loop body runs torch's own functions (``_gradients.loop_ops``:
    Keras' per-call dispatch costs more than the ops); the same attack with the body
    in ``keras.ops`` gives the same examples, bit for bit, and both go through the
    same model passes (the side-effect-free forward pass without a full variable
    mapping on torch)."""
    from keras_lowrank.robustness import _gradients
    from keras_lowrank.robustness.attacks import apgd

    model, x, y = trained
    fast = keras.ops.convert_to_numpy(APGD(0.1, loss=loss, steps=30, seed=3)(model, x, y))
    monkeypatch.setattr(apgd, "loop_ops", lambda: _gradients._KerasLoopOps)
    plain = keras.ops.convert_to_numpy(APGD(0.1, loss=loss, steps=30, seed=3)(model, x, y))
    np.testing.assert_array_equal(fast, plain)
    assert isinstance(_gradients.loop_ops(), _gradients._TorchLoopOps)
    assert np.abs(fast - x).max() > 0.05  # the attack moved the inputs


class _TrainingUnlessTold(keras.layers.Layer):
    """A user's layer that reads ``training=None`` as training (Keras allows it): adds 1."""

    def call(self, x, training=None):
        return x if training is False else x + 1.0


def test_attacks_call_the_model_in_inference_whatever_its_layers_defaults(trained):
    """Eager on torch, the attacks call a model of Keras' layers and this library's without the
    ``training`` keyword (Keras' fast call path) and any other with it: every model
    gives its inference pass, ``model(x, training=False)``, including one holding an
    augmentation layer (``training`` defaults to True) or a user's layer that reads None
    as training."""
    from keras_lowrank.robustness import _gradients

    model, x, _ = trained
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.BatchNormalization(), keras.layers.Dropout(0.5),
                              *model.layers[:3], LowRankProjection(8), *model.layers[3:]])
    augmented = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.RandomTranslation(0.5, 0.5, seed=0),
                                  *model.layers])
    inner = keras.Sequential([keras.Input((8, 8, 1)), _TrainingUnlessTold()])
    outer = keras.Sequential([keras.Input((8, 8, 1)), inner, *model.layers])
    assert _gradients._inference_by_default(plain)  # the fast path is taken where it is the same
    for m in (plain, augmented, outer):
        inference = keras.ops.convert_to_numpy(m(x, training=False))
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(_gradients.forward_without_side_effects(m, x)), inference)
        if m is not plain:  # the model's default call would not be inference
            assert np.abs(keras.ops.convert_to_numpy(m(x)) - inference).max() > 0.1
