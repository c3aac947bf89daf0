"""The command line end to end: each subcommand in a subprocess on a model trained
and saved here, its report checked against truth computed here another way; the
bad-input paths; the demo."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_lowrank import LowRankWarning, cli, data
from keras_lowrank.data import _has_tensorflow

pytestmark = pytest.mark.slow
HAS_TF = _has_tensorflow()


def _cli(*args, timeout=600, env=None, block_tensorflow=False):
    """``python -m keras_lowrank ARGS`` (or, with ``block_tensorflow``, main() in a
    Python where importing TensorFlow fails, as on a JAX-only install)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    if block_tensorflow:
        code = ("import sys; sys.modules['tensorflow'] = None\n"
                "from keras_lowrank.cli import main\nsys.exit(main(sys.argv[1:]))")
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "-m", "keras_lowrank", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(48, activation="relu", name="features"),
        keras.layers.Dense(10, name="logits"),
    ])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small CNN trained on digits, saved; and the digits test arrays."""
    folder = tmp_path_factory.mktemp("models")
    (x, y), test = data.load_digits_arrays("train"), data.load_digits_arrays("test")
    keras.utils.set_random_seed(0)
    model = _cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    model.save(folder / "cnn.keras")
    return {"model": str(folder / "cnn.keras"), "folder": folder, "test": test}


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def test_compress_end_to_end(saved, tmp_path):
    out = tmp_path / "small"
    formats = ["keras", "saved_model", "tflite"] if HAS_TF and keras.backend.backend() == "tensorflow" else ["keras"]
    formats += ["onnx"] if importlib.util.find_spec("onnxruntime") else []  # the onnx extra
    done = _cli("compress", saved["model"], "--data", "digits", "--rank", "4", "--finetune-epochs", "1",
                "--limit", "200", "--formats", *formats, "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(out)
    assert report["meta"]["command"].startswith("keras-lowrank compress ")
    assert report["meta"]["backend"] == keras.backend.backend()
    assert report["converted_layers"] == ["conv", "features"]  # the last layer stays dense
    assert [c["format"] for c in report["reload_checks"]] == formats
    assert all(c["passed"] and c["max_abs_difference"] <= c["tolerance"] for c in report["reload_checks"])
    # Independent truth: the exported .keras file, loaded here, has the parameters and
    # the test accuracy the report gives the fine-tuned low-rank model (same 200 examples).
    exported = keras.saving.load_model(out / "export" / "model.keras")
    x, y = (a[:200] for a in saved["test"])
    assert exported.count_params() == report["parameters"]["after"]
    assert report["parameters"]["after"] < report["parameters"]["before"] == keras.saving.load_model(
        saved["model"]).count_params()
    accuracy = float(np.mean(np.argmax(exported.predict(x, verbose=0), -1) == y))
    assert accuracy == pytest.approx(report["accuracy"]["after"], abs=1.5 / len(y))  # one flip at most
    # fine-tuning is kept only where it did not lower the held-out accuracy (the last
    # tenth of the 200 training examples), scored here on the exported file
    x_train, y_train = (a[:200][-20:] for a in data.load_digits_arrays("train"))
    held = report["fine_tuning_held_out"]
    kept = float(np.mean(np.argmax(exported.predict(x_train, verbose=0), -1) == y_train))
    assert held["examples"] == 20 and kept >= held["after_svd"] - 1e-9
    assert kept == pytest.approx(held["after_svd"] if held["kept"] == "svd" else held["best_epoch_after_truncation"])
    rank = next(r for r in report["summary"]["layers"] if r["layer"] == "features")["rank"]
    assert exported.get_layer("features").layers[0].kernel.shape == (6 * 6 * 8, rank)
    assert report["file_sizes"]["after"]["keras"] == os.path.getsize(out / "export" / "model.keras")
    for name in ("report.md", "compression.png"):
        assert (out / name).stat().st_size > 0
    assert "re-loaded without keras_lowrank" in (out / "report.md").read_text()


def test_max_drop_keeps_the_smallest_budget_within_the_drop(saved, tmp_path):
    """--max-drop walks the budget ladder down and keeps the last budget whose held-out
    accuracy (the last tenth of the training split, scored here again) is within the
    drop; the exported model is that budget's conversion."""
    from keras_lowrank import compression
    from keras_lowrank.cli.compress import BUDGET_LADDER

    # 40 held-out examples: one flip is 2.5 points; 5 allows two (one flip at 71 % was
    # seen on a model trained on torch)
    out, limit, max_drop = tmp_path / "search", 400, 5.0
    done = _cli("compress", saved["model"], "--data", "digits", "--max-drop", str(max_drop), "--limit", str(limit),
                "--finetune-epochs", "0", "--formats", "keras", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    search = _report(out)["budget_search"]
    tried = [t["budget"] for t in search["tried"]]
    assert tried == list(BUDGET_LADDER[:len(tried)])
    model = keras.saving.load_model(saved["model"])
    x, y = (a[:limit] for a in data.load_digits_arrays("train"))
    x_fit, x_val, y_val = x[:-limit // 10], x[-limit // 10:], y[-limit // 10:]

    def held_out(m):
        return float(np.mean(np.argmax(m.predict(x_val, verbose=0), -1) == y_val))

    reference = held_out(model)
    assert search["reference_held_out_accuracy"] == pytest.approx(reference, abs=1e-9)
    for row in search["tried"]:  # each drop as computed here, within exactly when ≤ max_drop
        with warnings.catch_warnings():  # notes on layers left dense are the report's business here
            warnings.simplefilter("ignore", LowRankWarning)
            low = compression.to_low_rank(model, budget=row["budget"], data=x_fit[:256])
        drop = 100 * (reference - held_out(low))
        assert row["drop_points"] == pytest.approx(drop, abs=100 * 1.5 / len(y_val))  # one flip at most
        assert row["within"] == (row["drop_points"] <= max_drop)
    assert all(t["within"] for t in search["tried"][:-1])
    assert search["chosen"] == min(t["budget"] for t in search["tried"] if t["within"])
    if len(tried) < len(BUDGET_LADDER):  # stopped early: the next budget lost too much
        assert not search["tried"][-1]["within"] or search["tried"][-1]["budget"] == search["chosen"]
    chosen = next(t for t in search["tried"] if t["budget"] == search["chosen"])
    exported = keras.saving.load_model(out / "export" / "model.keras")
    assert exported.count_params() == chosen["parameters"] < model.count_params()


def test_max_drop_that_no_budget_meets_is_one_line_and_writes_nothing(saved, tmp_path, capsys, monkeypatch):
    from keras_lowrank.cli import compress

    monkeypatch.setattr(compress, "BUDGET_LADDER", (0.1,))  # rank ≤ 4 of 48 for the CNN's Dense
    status = cli.main(["compress", saved["model"], "--data", "digits", "--max-drop", "0", "--limit", "300",
                       "--output", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "--max-drop 0: no budget keeps" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def _mlp(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])


def _conv1d(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Conv1D(32, 5, activation="relu"),
                             keras.layers.Conv1D(64, 5, strides=2, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])


def _transformer(shape, tokens=16, width=32):
    images = keras.Input(shape)
    x = keras.layers.Reshape((tokens, width))(keras.layers.Conv2D(width, 2, strides=2)(images))
    h = keras.layers.LayerNormalization()(x)
    q, k, v = (keras.layers.EinsumDense("abc,cde->abde", (tokens, 4, 8), bias_axes="de")(h) for _ in range(3))
    attended = keras.ops.dot_product_attention(q, k, v)
    x = keras.layers.Add()([x, keras.layers.EinsumDense("abcd,cde->abe", (tokens, width), bias_axes="e")(attended)])
    x = keras.layers.Add()([x, keras.layers.Dense(width)(keras.layers.Dense(128, activation="gelu")(x))])
    return keras.Model(images, keras.layers.Dense(10)(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("build, dataset", [(_mlp, "digits"), (_conv1d, "mnist1d"), (_transformer, "digits")],
                         ids=["digits MLP", "MNIST-1D CNN", "digits transformer"])
def test_compress_with_its_defaults_makes_every_trained_model_smaller(build, dataset, tmp_path):
    """No --budget, --tol or --rank: the default budget compresses each architecture of
    benchmarks/compress_budget.py (Dense, Conv1D, EinsumDense attention), trained here;
    the exported file is smaller and reproduces the model."""
    from keras_lowrank.cli.compress import DEFAULT_BUDGET

    load = {"digits": data.load_digits_arrays, "mnist1d": data.load_mnist1d_arrays}[dataset]
    x, y = (np.asarray(a) for a in load("train"))
    keras.utils.set_random_seed(0)
    model = build(x.shape[1:])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    model.save(tmp_path / "model.keras")
    done = _cli("compress", str(tmp_path / "model.keras"), "--data", dataset, "--limit", "400",
                "--finetune-epochs", "1", "--formats", "keras", "--output", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(tmp_path / "out")
    assert report["settings"]["budget"] == DEFAULT_BUDGET
    assert report["converted_layers"]
    assert report["parameters"]["after"] < report["parameters"]["before"] == model.count_params()
    assert report["file_sizes"]["after"]["keras"] < os.path.getsize(tmp_path / "model.keras")
    assert all(check["passed"] for check in report["reload_checks"])


def test_reload_check_fails_for_a_file_that_needs_keras_lowrank(tmp_path):
    """The re-load really runs without keras_lowrank: a model of our layers fails there."""
    from keras_lowrank import DynamicLowRankDense
    from keras_lowrank.cli.compress import reload_elsewhere

    model = keras.Sequential([keras.Input((6,)), DynamicLowRankDense(4, max_rank=2)])
    model.save(tmp_path / "model.keras")
    outputs, status = reload_elsewhere(str(tmp_path), np.zeros((2, 6), "float32"))
    assert outputs == {} and "keras" in status["errors"]
    assert not status["keras_lowrank_imported"]


def test_evaluate_end_to_end(saved, tmp_path):
    out = tmp_path / "robust"
    done = _cli("evaluate", saved["model"], "--data", "digits", "--limit", "100", "--attacks", "fgsm:0.1",
                "pgd5:0.1", "--noise", "0.0", "--corruptions", "1", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["name"]: r for r in _report(out)["report"]["rows"]}
    model = keras.saving.load_model(saved["model"])
    x, y = (a[:100] for a in saved["test"])
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    assert rows["clean"]["accuracy"] == pytest.approx(clean, abs=1e-6)
    assert rows["Gaussian σ=0"]["accuracy"] == pytest.approx(clean, abs=1e-6)  # σ = 0 changes nothing
    assert {"FGSM L∞ ε=0.1", "PGD-5 L∞ ε=0.1"} <= set(rows)
    assert any(r["family"].startswith("corruption") for r in rows.values())
    assert "large-ε probe" in " ".join(rows)
    text = (out / "report.md").read_text()
    assert "| check | result | detail |" in text and "keras-lowrank evaluate" in text
    assert (out / "robustness.png").stat().st_size > 0


def _unbiased_hsic(a, b):
    """Song et al.'s unbiased HSIC of two feature matrices (linear kernels), float64."""
    k, l = a @ a.T, b @ b.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    n = len(a)
    ones = np.ones(n)
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ k @ l @ ones)) / (n * (n - 3))


def test_analyze_end_to_end(saved, tmp_path):
    model = keras.saving.load_model(saved["model"])
    other = keras.models.clone_model(model)  # the same network, its conv kernel perturbed
    rng = np.random.default_rng(0)
    other.set_weights([w * (1 + 1.5 * rng.standard_normal(w.shape)) if w.ndim == 4 else w
                       for w in model.get_weights()])
    other.save(tmp_path / "other.keras")
    out = tmp_path / "analysis"
    done = _cli("analyze", saved["model"], "--compare", str(tmp_path / "other.keras"), "--data", "digits",
                "--layers", "conv", "features", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(out)
    # CKA across the two models against numpy: minibatch CKA (Nguyen et al. 2021) over
    # the CLI's batches of 256 in order, each an unbiased HSIC of the flattened outputs
    x = saved["test"][0]
    names = ["conv", "features"]
    outputs = [[np.asarray(keras.Model(m.inputs, m.get_layer(n).output).predict(x, verbose=0), "float64")
                .reshape(len(x), -1) for n in names] for m in (model, other)]
    batches = [slice(b, b + 256) for b in range(0, len(x), 256) if len(x) - b >= 4]

    def summed(a, b):
        return sum(_unbiased_hsic(a[rows], b[rows]) for rows in batches)

    (a0, a1), (b0, b1) = outputs
    expected = np.array([[summed(a, b) / np.sqrt(summed(a, a) * summed(b, b)) for b in (b0, b1)] for a in (a0, a1)])
    assert np.ptp(expected) > 0.05  # the entries differ: the check can tell
    np.testing.assert_allclose(report["cka_compare"]["matrix"], expected, atol=1e-3)
    # ranks against numpy: the spectrum of the centred features
    features = keras.Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    features = features.astype("float64") - features.mean(0)
    s = np.linalg.svd(features, compute_uv=False)
    energy = np.cumsum(s**2) / np.sum(s**2)
    assert report["ranks"]["features"]["variance_rank"] == int(np.searchsorted(energy, 0.99) + 1)
    assert [layer["layer"] for layer in report["selectivity"]["layers"]] == ["conv", "features"]
    for name in ("spectra.png", "cka.png", "cka_compare.png", "report.md"):
        assert (out / name).stat().st_size > 0


def test_npz_data_and_one_hot_labels(saved, tmp_path):
    x, y = saved["test"]
    path = tmp_path / "mine.npz"
    np.savez(path, x=x[:60], y=np.eye(10)[y[:60]])  # one-hot; no x_test: the last 20 % is the test split
    done = _cli("evaluate", saved["model"], "--data", str(path), "--attacks", "--no-probe",
                "--output", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    report = _report(tmp_path / "out")
    assert report["report"]["num_examples"] == 12 and "last 20 %" in report["data"]
    model = keras.saving.load_model(saved["model"])
    clean = float(np.mean(np.argmax(model.predict(x[48:60], verbose=0), -1) == y[48:60]))
    assert report["report"]["rows"][0]["accuracy"] == pytest.approx(clean, abs=1e-6)


def _bad(tmp_path, saved, arrays=None, extra=()):
    path = tmp_path / "bad.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    return cli.main(["evaluate", saved["model"], "--data", str(path), "--output", str(tmp_path / "out"),
                     "--quiet", *extra])


@pytest.mark.parametrize("case, message", [
    ("shape", "the model takes (8, 8, 1) (add the channel axis"),
    ("labels", "..12 but the model has 10 outputs (classes 0..9)"),
    ("nan", "NaN"),
    ("range", "pass --clip LOW HIGH"),
    ("missing_y", "lacks y"),
    ("lengths", "x has 20 examples but y has 19"),
    ("fractional", "not whole numbers"),
])
def test_bad_data_is_refused_with_one_line(saved, tmp_path, capsys, case, message):
    x, y = saved["test"]
    x, y = x[:20].copy(), y[:20].copy()
    arrays = {"shape": dict(x=x[..., 0], y=y), "labels": dict(x=x, y=np.where(y == 0, 12, y)),
              "nan": dict(x=np.where(x > 0.5, np.nan, x), y=y), "range": dict(x=x * 255, y=y),
              "missing_y": dict(x=x), "lengths": dict(x=x, y=y[:19]),
              "fractional": dict(x=x, y=y + 0.5)}[case]
    assert _bad(tmp_path, saved, arrays) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_autoattack_on_a_three_class_model_names_the_flags_that_apply(tmp_path, capsys, monkeypatch):
    """Refused before any row runs (it failed after the others, with a hint in Python)."""
    import keras_lowrank.robustness as robustness

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save(tmp_path / "three.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.uniform(size=(12, 4)).astype("float32"), y=np.arange(12) % 3)
    monkeypatch.setattr(robustness, "evaluate_robustness", lambda *a, **k: pytest.fail("a row ran"))
    for name in ("autoattack", "apgd-t"):
        status = cli.main(["evaluate", str(tmp_path / "three.keras"), "--data", str(tmp_path / "d.npz"),
                           "--attacks", "fgsm:0.1", f"{name}:0.1", "--no-probe", "--quiet",
                           "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert status == 2 and f"--attacks {name}:0.1: needs a model of at least 4 classes" in err, err
        assert "--attacks apgd-ce:0.1 square:0.1" in err and not (tmp_path / "out").exists()
    binary = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    binary.save(tmp_path / "two.keras")
    np.savez(tmp_path / "d2.npz", x=rng.uniform(size=(12, 4)).astype("float32"), y=np.arange(12) % 2)
    status = cli.main(["evaluate", str(tmp_path / "two.keras"), "--data", str(tmp_path / "d2.npz"),
                       "--attacks", "autoattack-rand:0.1", "--no-probe", "--quiet", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and "--attacks autoattack-rand:0.1: needs a model of at least 3 classes (its DLR" in err, err


def test_autoattack_versions_by_name():
    from keras_lowrank.cli.evaluate import parse_attack

    versions = {name: parse_attack(f"{name}:0.1").build((0, 1), 0).version
                for name in ("autoattack", "autoattack-fast", "autoattack-rand")}
    assert versions == {"autoattack": "standard", "autoattack-fast": "fast", "autoattack-rand": "rand"}


def test_a_number_after_an_attacks_name_sets_its_steps():
    from keras_lowrank.cli.common import JobError
    from keras_lowrank.cli.evaluate import parse_attack

    for name in ("pgd", "apgd-ce", "apgd-t", "fab", "square", "spsa", "autoattack", "autoattack-fast"):
        default = parse_attack(f"{name}:0.1").build((0, 1), 0)
        attack = parse_attack(f"{name}7:0.1").build((0, 1), 0)
        assert attack.steps == 7 != default.steps, name
        assert type(attack) is type(default) and attack.eps == default.eps == 0.1
    with pytest.raises(JobError, match="fgsm is one step"):
        parse_attack("fgsm3:0.1")


def test_bad_arguments_exit_2_before_any_work(saved, tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    cases = [
        (["evaluate", saved["model"], "--data", "digits", "--output", str(tmp_path / "old")], "--overwrite"),
        (["evaluate", str(tmp_path / "none.keras"), "--data", "digits", "--output", str(tmp_path / "o")],
         "is not a file"),
        (["evaluate", saved["model"], "--data", "imagenet", "--output", str(tmp_path / "o")], "unknown dataset"),
        (["evaluate", saved["model"], "--data", "digits", "--attacks", "pgd:abc", "--output", str(tmp_path / "o")],
         "NAME[STEPS]:EPS"),
        (["evaluate", saved["model"], "--data", "digits", "--attacks", "cw:0.1", "--output", str(tmp_path / "o")],
         "autoattack"),
        (["evaluate", saved["model"], "--data", "digits", "--clip", "1", "0", "--output", str(tmp_path / "o")],
         "LOW must be below HIGH"),
        (["compress", saved["model"], "--data", "digits", "--tol", "0", "--output", str(tmp_path / "o")], "--tol"),
        (["compress", saved["model"], "--data", "digits", "--tol", "0.1", "--rank", "3",
          "--output", str(tmp_path / "o")], "not allowed with"),
        (["compress", saved["model"], "--data", "digits", "--max-drop", "-1", "--output", str(tmp_path / "o")],
         "--max-drop"),
        (["compress", saved["model"], "--data", "digits", "--max-drop", "1", "--budget", "0.5",
          "--output", str(tmp_path / "o")], "not allowed with"),
        (["analyze", saved["model"], "--data", "digits", "--layers", "nope", "--output", str(tmp_path / "o")],
         "no layer named 'nope'"),
        (["demo", "--output", str(tmp_path / "o"), "--epochs", "0"], "--epochs"),
        (["evaluate", saved["model"], "--data", "digits", "--output", str(tmp_path / "old" / "notes.txt" / "o")],
         "notes.txt is a file, not a folder"),
    ]
    for argv, message in cases:
        try:
            status = cli.main(argv)
        except SystemExit as exited:
            status = exited.code
        err = capsys.readouterr().err
        assert status == 2 and message in err, (argv, err)
        assert err.count("\n") == 1, err  # one line, as the docs promise (argparse printed usage first)
    assert os.listdir(tmp_path) == ["old"] and os.listdir(tmp_path / "old") == ["notes.txt"]


def test_report_tables_keep_a_quoted_multiline_error_in_its_cell():
    from keras_lowrank.cli.common import markdown_table

    table = markdown_table(["format", "detail"], [["keras", "Traceback:\n  x | y\nValueError: bad"]])
    lines = table.splitlines()
    assert len(lines) == 3  # head, rule, one row
    # the row has as many cell borders as the head: pipes inside the cell are escaped
    assert len(re.findall(r"(?<!\\)\|", lines[2])) == len(re.findall(r"\|", lines[0])) == 3
    assert "Traceback: x \\| y ValueError: bad" in lines[2]


def test_help_shows_examples():
    from keras_lowrank.cli import parser

    for command in ("compress", "evaluate", "analyze", "demo"):
        text = parser.build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "examples:" in text and f"keras-lowrank {command}" in text


def test_exit_status_and_overwrite_in_a_subprocess(saved, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = _cli("evaluate", saved["model"], "--data", "digits", "--output", str(out), "--timeout-typo")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    run = ("evaluate", saved["model"], "--data", "digits", "--limit", "20", "--attacks", "fgsm:0.1",
           "--no-probe", "--quiet")
    done = _cli(*run, "--output", str(out), "--overwrite")  # the user's notes.txt: refused
    assert done.returncode == 2 and "did not write (notes.txt)" in done.stderr and "usage:" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("keras-lowrank")]) == 1
    assert os.listdir(out) == ["notes.txt"]
    out = tmp_path / "earlier_run"
    assert _cli(*run, "--output", str(out)).returncode == 0
    done = _cli(*run, "--output", str(out), "--overwrite")  # a folder a run wrote: replaced whole
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(out)) == [".keras-lowrank-manifest.json", "report.json", "report.md",
                                       "robustness.png"]


def test_other_backend_and_no_tensorflow(saved, tmp_path):
    """--backend switches Keras' backend (the process restarts with it); and with
    TensorFlow unimportable the jobs run on JAX (data as a PyDataset, .keras export)."""
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        pytest.skip("needs JAX")
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    if other == "tensorflow" and not HAS_TF:
        pytest.skip("needs TensorFlow")
    done = _cli("evaluate", saved["model"], "--data", "digits", "--limit", "40", "--attacks", "fgsm:0.1",
                "--no-probe", "--backend", other, "--output", str(tmp_path / "other"), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _report(tmp_path / "other")["meta"]["backend"] == other
    done = _cli("compress", saved["model"], "--data", "digits", "--limit", "100", "--rank", "4",
                "--finetune-epochs", "1", "--prefer", "speed", "--output", str(tmp_path / "jax"), "--quiet",
                env={"KERAS_BACKEND": "jax"}, block_tensorflow=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = _report(tmp_path / "jax")
    assert report["meta"]["backend"] == "jax" and "tensorflow" not in report["meta"]["versions"]
    assert [c["format"] for c in report["reload_checks"]] == ["keras"] and report["reload_checks"][0]["passed"]
    # --prefer speed: each converted layer timed in both forms, and the file holds the form
    # the report names (a Keras layer with the kernel multiplied back, or the factor pair)
    exported = keras.saving.load_model(tmp_path / "jax" / "export" / "model.keras")
    assert report["settings"]["prefer"] == "speed"
    assert sorted(report["exported_forms"]) == sorted(report["export_timings"]) == ["conv", "features"]
    for path, form in report["exported_forms"].items():
        assert isinstance(exported.get_layer(path), keras.Sequential) == (form == "factors")
        assert all(seconds > 0 for seconds in report["export_timings"][path]["seconds"].values())
    done = _cli("compress", saved["model"], "--data", "digits", "--formats", "saved_model", "--output",
                str(tmp_path / "no"), env={"KERAS_BACKEND": "jax"}, block_tensorflow=True)
    assert done.returncode == 2 and "need TensorFlow" in done.stderr


@pytest.mark.slow_on_jax("XLA compiles every attack and training step: several minutes on 2 CPUs")
def test_quick_demo(tmp_path):
    out = tmp_path / "demo"
    done = _cli("demo", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lr"]["variance_rank_99"] <= summary["rank"]  # the LR layer's point
    assert all(c["passed"] for c in summary["compress"]["reload_checks"])
    readme = (out / "README.md").read_text()
    for heading in ("## 1. The LR layer", "## 2. compress", "## 3. evaluate", "## 4. analyze"):
        assert heading in readme
    for part in ("compress", "evaluate_baseline", "evaluate_lr", "analyze"):
        meta = json.loads((out / part / "report.json").read_text())["meta"]
        assert str(out) in meta["command"] and ".partial" not in meta["command"]


@pytest.mark.slow_on_jax("XLA compiles each of the hundreds of perturbation steps: > 20 min on 2 CPUs")
def test_full_demo_writes_its_outputs(tmp_path, capsys):
    pytest.importorskip("tensorflow")  # the full demo's tables use tf.data pipelines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LowRankWarning)
        assert cli.main(["demo", "--full", "--output", str(tmp_path), "--epochs", "2",
                         "--sigmas", "0.1", "0.3", "--seeds", "0", "1",
                         "--dlrt-datasets", "digits", "--dlrt-epochs", "1",
                         "--analysis-datasets", "digits", "--analysis-epochs", "1"]) == 0
    # one DLRT epoch may leave layers at their max_rank (said, as to any user); nothing else
    said = [str(w.message) for w in caught if issubclass(w.category, LowRankWarning)]
    assert all("ended training at their max_rank" in message for message in said), said
    printed = capsys.readouterr().out
    assert "var. rank 99%" in printed and "baseline" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["mean"]) == {"baseline", "lr"}
    assert results["lr_arguments"] == {"loss": "relative"}  # the layer's defaults
    runs = results["per_seed"]["lr"]
    assert len(runs) == 2 and {"accuracy_sigma_0.1", "accuracy_sigma_0.3"} <= set(runs[0])
    accuracies = [r["accuracy"] for r in runs]
    assert results["mean"]["lr"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
    # the first seed's file holds the model it measured: its accuracy, and the accuracy from
    # r stored numbers per image (the head on decode(encode(features))), recomputed here
    x, y = data.load_digits_arrays("test")
    lr_model = keras.saving.load_model(tmp_path / "lr.keras")
    assert np.mean(np.argmax(lr_model.predict(x, verbose=0), -1) == y) == pytest.approx(runs[0]["accuracy"], abs=1e-6)
    projection = lr_model.get_layer("low_rank")
    projection.threshold()
    features = keras.Model(lr_model.inputs, lr_model.get_layer("features").output).predict(x, verbose=0)
    logits = lr_model.get_layer("logits")(projection.decode(projection.encode(features)))
    from_codes = np.mean(np.argmax(keras.ops.convert_to_numpy(logits), -1) == y)
    assert from_codes == pytest.approx(runs[0]["compressed_feature_accuracy"], abs=1e-6)
    robustness = results["robustness"]
    assert set(robustness) == {"baseline", "lr", "pgd_trained"}
    assert robustness["lr"]["rows"][0]["name"] == "clean"
    assert "gradient-masking checks, pgd_trained" in printed
    assert "DLRT on digits" in printed
    dlrt = results["dlrt"]["digits"]
    assert set(dlrt) == {"dense", "dlrt", "dlrt_spectral", "dense_to_dlrt"} and len(dlrt["dlrt"]) == 2
    assert 0 < dlrt["dlrt"][0]["compression_rate"] < 1 and "fgsm_0.05" in dlrt["dense"][0]
    assert dlrt["dense_to_dlrt"][0]["compression_rate"] >= 0.9  # rank ≤ max_rank 24 of 512×512
    analysis = results["analysis"]["digits"]
    assert [row["model"] for row in analysis["cka"]] == ["standard", "pgd_trained", "lr"]
    # mean linear CKA between distinct layers: 0.90 for each model here; near 0 would mean
    # unrelated layers (e.g. rows shuffled between layers), 1 a layer compared with itself
    assert all(0.3 < row["block_structure"] < 0.99 for row in analysis["cka"]), analysis["cka"]
    sweep = analysis["selectivity"]
    assert set(sweep["mean"]) == {"-2.0", "-1.0", "0.0", "1.0", "2.0"}
    assert len(sweep["per_alpha"]["0.0"]) == 2 and len(sweep["claims"]) == 6
    assert sweep["mean"]["0.0"]["corruptions"] == pytest.approx(
        np.mean([run["corruptions"] for run in sweep["per_alpha"]["0.0"]]))
    assert all(0.5 < run["corruptions"] < run["clean"] for run in sweep["per_alpha"]["0.0"])
    assert "Class-selectivity sweep on digits" in printed and "CKA on digits" in printed
    for name in ("spectra.png", "robustness.png", "robustness.md", "baseline.keras",
                 "lr.keras", "pgd_trained.keras", "cka_digits.png", "selectivity_digits.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.tf_only("TensorFlow Datasets' mock_data")
def test_tfds_name_through_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    model.save(tmp_path / "m.keras")
    with tfds.testing.mock_data(num_examples=16):
        assert cli.main(["evaluate", str(tmp_path / "m.keras"), "--data", "mnist", "--attacks", "fgsm:0.1",
                         "--no-probe", "--output", str(tmp_path / "out"), "--quiet"]) == 0
    report = _report(tmp_path / "out")
    assert report["report"]["num_examples"] == 16 and report["data"].startswith("mnist (TensorFlow Datasets")


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

