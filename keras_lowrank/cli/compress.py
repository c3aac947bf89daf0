"""``keras-lowrank compress``: the user's model → low-rank → DLRT fine-tuning →
truncation → exported at exact ranks, each exported file re-loaded in a fresh
Python that cannot import keras_lowrank and checked against the model."""

import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

from keras_lowrank.cli import common
from keras_lowrank.cli.common import JobError

# Run in a fresh interpreter: keras_lowrank is made unimportable, so a file that
# needs it fails to load here exactly as it would on a user's serving machine.
_RELOAD = r"""
import json, os, sys
import numpy as np
folder, inputs, results, allow = sys.argv[1:5]
sys.modules["keras_lowrank"] = None
x = dict(np.load(inputs)) if inputs.endswith(".npz") else np.load(inputs)
out, errors = {}, {}
def full_float32():  # no TF32 on GPUs, as in the parent (JAX: JAX_DEFAULT_MATMUL_PRECISION)
    import keras
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        tf.config.experimental.enable_tensor_float_32_execution(False)
def attempt(kind, run):
    try:
        out[kind] = np.asarray(run(), dtype="float32")
    except Exception as error:
        errors[kind] = f"{type(error).__name__}: {str(error)[:300]}"
if os.path.exists(os.path.join(folder, "saved_model")):
    def saved_model():
        import tensorflow as tf
        tf.config.experimental.enable_tensor_float_32_execution(False)
        loaded = tf.saved_model.load(os.path.join(folder, "saved_model"))  # kept: its variables
        return loaded.serve(x).numpy()
    attempt("saved_model", saved_model)
if os.path.exists(os.path.join(folder, "model.tflite")):
    def tflite():
        import tensorflow as tf
        interpreter = tf.lite.Interpreter(os.path.join(folder, "model.tflite"))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    attempt("tflite", tflite)
if os.path.exists(os.path.join(folder, "model.onnx")):
    def onnx_file():
        import onnxruntime
        session = onnxruntime.InferenceSession(os.path.join(folder, "model.onnx"))
        names = [i.name for i in session.get_inputs()]
        return session.run(None, {n: x[n] for n in names} if isinstance(x, dict) else {names[0]: x})[0]
    attempt("onnx", onnx_file)
if os.path.exists(os.path.join(folder, "model.keras")):
    if allow == "1":  # low-rank layers inside the model's own layers: keras_lowrank rebuilds them
        del sys.modules["keras_lowrank"]
        import keras_lowrank  # noqa: F401
    def keras_file():
        import keras
        full_float32()
        return keras.saving.load_model(os.path.join(folder, "model.keras")).predict(x, verbose=0)
    attempt("keras", keras_file)
np.savez(results, **out)
print(json.dumps({"errors": errors, "keras_lowrank_imported": sys.modules.get("keras_lowrank") is not None}))
"""


def default_formats(model=None):
    """keras and, with TensorFlow installed, saved_model — but on another backend than
    TensorFlow for a model of token ids (keras-hub's text models), whose SavedModel
    Keras cannot trace there: keras alone."""
    import keras

    from keras_lowrank.data import _has_tensorflow

    if not _has_tensorflow():
        return ["keras"]
    if model is not None and keras.backend.backend() != "tensorflow" and common.named_inputs(model):
        return ["keras"]
    return ["keras", "saved_model"]


def check_formats(formats, model=None):
    """What the formats need installed; with ``model``, on this backend (ONNX: what
    Keras' export needs, and onnxruntime for the reload check)."""
    import importlib.util

    from keras_lowrank.data import _has_tensorflow

    needs_tf = [f for f in formats if f in ("saved_model", "tflite")]
    if needs_tf and not _has_tensorflow():
        raise JobError(f"--formats {' '.join(needs_tf)} need TensorFlow installed "
                       "(pip install tensorflow-cpu); --formats keras needs only Keras.")
    if "onnx" in formats and importlib.util.find_spec("onnxruntime") is None:
        raise JobError("--formats onnx: the exported file is checked in onnxruntime, which is not installed "
                       "(pip install 'keras-lowrank[onnx]').")
    if "onnx" in formats and model is not None:
        from keras_lowrank.compression.export import check_onnx_export

        try:
            check_onnx_export(model)
        except ValueError as error:
            raise JobError(f"--formats onnx: {error}") from None


def reload_elsewhere(folder, x, timeout=600, keras_needs_us=False):
    """{format: outputs} of each exported file, computed by a fresh interpreter
    in which importing keras_lowrank fails (but for the .keras file of a model whose
    low-rank layers sit inside its own layers, ``keras_needs_us``: keras_lowrank then
    rebuilds them); plus the errors it met. Matrix products
    in full float32 there, as the reference is computed (a GPU's default TF32 has
    relative errors ≈ 1e-3: the files would seem not to reproduce the model)."""
    import json

    with tempfile.TemporaryDirectory() as scratch:
        inputs = os.path.join(scratch, "x.npz" if isinstance(x, dict) else "x.npy")
        results = os.path.join(scratch, "out.npz")
        if isinstance(x, dict):
            np.savez(inputs, **x)
        else:
            np.save(inputs, x)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        done = subprocess.run([sys.executable, "-c", _RELOAD, folder, inputs, results,
                               "1" if keras_needs_us else "0"],
                              capture_output=True, text=True, timeout=timeout, cwd=scratch, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"re-loading the exported files failed:\n{done.stderr[-2000:]}")
        status = json.loads(done.stdout.strip().splitlines()[-1])
        with np.load(results) as file:
            outputs = {key: file[key] for key in file.files}
    return outputs, status


def run(args, meta):
    import keras

    from keras_lowrank import compression
    from keras_lowrank._keras_compat import layer_paths
    from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
    from keras_lowrank.optimizers import DLRT
    from keras_lowrank.precision import float32_matmuls
    from keras_lowrank.robustness._classifier import outputs_logits

    model = common.load_model(args.model)
    args.formats = args.formats or default_formats(model)
    check_formats(args.formats, model)
    arrays = common.check_against_model(common.load_arrays(args.data, args.data_dir, args.limit),
                                        model, args.clip)
    (x, y), (x_test, y_test) = arrays["train"], arrays["test"]
    keras.utils.set_random_seed(args.seed)
    before = common.accuracy(model, x_test, y_test)
    max_drop = getattr(args, "max_drop", None)
    if args.budget is None and args.tol is None and args.rank is None and max_drop is None:
        args.budget = DEFAULT_BUDGET
    n_train, n_test = common.length(x), common.length(x_test)
    # The last tenth of the training split (never the test split) judges the budget search
    # and the fine-tuning; calibration and fine-tuning use the rest.
    held = max(1, n_train // 10) if (args.finetune_epochs or max_drop is not None) else 0
    x_fit, y_fit = (common.rows(x, None, -held), y[:-held]) if held else (x, y)
    x_val, y_val = (common.rows(x, -held), y[-held:]) if held else (None, None)
    calibration = common.rows(x_fit, None, CALIBRATION_EXAMPLES)
    n_calibration = common.length(calibration)
    search = None
    if max_drop is not None:
        args.budget, (low, caught), search = _search_budget(model, args, calibration, x_val, y_val)
    how = (f"--rank {args.rank}" if args.rank else f"--tol {args.tol:g}" if args.tol is not None
           else f"--budget {args.budget:g}" + (f" (the smallest within --max-drop {max_drop:g})" if search else ""))
    print(f"{args.model}: accuracy {before:.4f} on {n_test} test examples; converting at {how}, "
          f"factorised for the outputs on {n_calibration} training examples")
    if search is None:
        low, caught = _convert(model, args, args.budget, calibration, how)
    for warning in caught:  # the conversion's own notes (a layer left dense and why, …)
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    converted = [p for p, layer in layer_paths(low) if isinstance(layer, DynamicLowRankBase)]
    after_svd = common.accuracy(low, x_test, y_test)
    low.compile(optimizer=DLRT(keras.optimizers.Adam(args.learning_rate)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model)),
                metrics=["accuracy"])
    finetuning, held_out = "not run (--finetune-epochs 0)", None
    if args.finetune_epochs:
        # where fine-tuning did not help on the held-out examples, the model right after
        # the SVD is kept, and the report says so
        val_svd = common.accuracy(low, x_val, y_val)
        factors = [w.copy() for w in low.get_weights()]
        print(f"DLRT fine-tuning, {args.finetune_epochs} epoch(s) on {n_train - held} examples "
              f"({held} held out to judge it)")
        # Keras' EarlyStopping keeps the epoch with the best held-out accuracy (patience =
        # all epochs: it only remembers and restores, it never stops the run)
        best = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=args.finetune_epochs,
                                             restore_best_weights=True)
        low.fit(x_fit, y_fit, batch_size=args.batch_size, epochs=args.finetune_epochs,
                validation_data=(x_val, y_val), callbacks=[best], verbose=0 if args.quiet else 1)
        compression.truncate_ranks(low)
        val_tuned = common.accuracy(low, x_val, y_val)
        epoch = f"epoch {best.best_epoch + 1} of {args.finetune_epochs}"
        if val_tuned < val_svd:
            low.set_weights(factors)
            finetuning = (f"did not help (held-out accuracy {val_svd:.4f} after the SVD, {val_tuned:.4f} at the "
                          f"best fine-tuning {epoch}): the model right after the SVD is kept")
        else:
            finetuning = (f"held-out accuracy {val_svd:.4f} → {val_tuned:.4f}: the fine-tuned model of its "
                          f"best {epoch} is kept")
        held_out = {"examples": held, "after_svd": val_svd, "best_epoch": best.best_epoch + 1,
                    "best_epoch_after_truncation": val_tuned, "kept": "svd" if val_tuned < val_svd else "fine-tuned"}
        print(f"fine-tuning {finetuning}")
    compression.truncate_ranks(low)
    after = common.accuracy(low, x_test, y_test)
    summary = compression.compression_summary(low)

    with common.staged(args) as folder:
        export = os.path.join(folder, "export")
        quantize = getattr(args, "quantize", None)
        try:
            prefer = getattr(args, "prefer", "size")
            timing_x = common.rows(x_test, None, args.batch_size) if prefer == "speed" else None
            written = compression.export_compressed(low, export, formats=args.formats, quantize=quantize,
                                                    prefer=prefer, data=timing_x)
        except ValueError as error:  # e.g. a SavedModel Keras cannot trace on this backend
            raise JobError(f"--formats {' '.join(args.formats)}: {error}") from None
        compact = written["model"]
        quantised = common.accuracy(compact, x_test, y_test) if quantize else None
        sizes_after = {f: common.size_on_disk(written[f]) for f in args.formats}
        sizes_before = _original_sizes(model, args.model, args.formats)
        check_x = common.rows(x_test, None, args.check_examples)
        with float32_matmuls():  # no TF32 on a GPU, on either side of the comparison
            # a quantised export reproduces the quantised model, not the float one
            expected = np.asarray((compact if quantize else low).predict(check_x, verbose=0), dtype="float32")
        keras_needs_us = written.get("keras_needs_keras_lowrank", False)
        outputs, status = reload_elsewhere(export, check_x, keras_needs_us=keras_needs_us)
        tolerance = 1e-5 * max(1.0, float(np.abs(expected).max()))
        checks = []
        for kind in args.formats:
            if kind in outputs:
                error = float(np.abs(outputs[kind] - expected).max())
                checks.append({"format": kind, "max_abs_difference": error, "tolerance": tolerance,
                               "passed": bool(error <= tolerance), "detail": ""})
            else:
                checks.append({"format": kind, "max_abs_difference": None, "tolerance": tolerance,
                               "passed": False, "detail": status["errors"].get(kind, "not written")})
        model_rows = [
            ["test accuracy", f"{before:.4f}", f"{after:.4f} (right after the SVD: {after_svd:.4f})"],
            ["conversion", "", f"{how}; each kernel factorised for its outputs on {n_calibration} "
                               "training examples"],
            ["DLRT fine-tuning", "", finetuning],
        ] + ([["test accuracy after quantisation", "", f"{quantised:.4f} ({quantize}, Keras' own)"]]
             if quantize else []) + [
            ["exported forms", "", _forms_text(written["forms"], prefer)],
            ["parameters", f"{model.count_params():,}", f"{compact.count_params():,}"],
        ] + [[f"file size ({kind})", common.human_size(sizes_before[kind]),
              common.human_size(sizes_after[kind])] for kind in args.formats]
        check_rows = [[c["format"], "pass" if c["passed"] else "**FAIL**",
                       "" if c["max_abs_difference"] is None else f"{c['max_abs_difference']:.2e}",
                       f"{c['tolerance']:.1e}", c["detail"]] for c in checks]
        sections = [
            ("Data", arrays["description"] + f"; {n_train} training, {n_test} test examples."),
            ("The model", common.markdown_table(["", "before", "after"], model_rows)),
        ] + ([(f"Budget search (--max-drop {max_drop:g})", _search_text(search))] if search else []) + [
            ("Per layer", summary.to_markdown()),
            ("Exported files, re-loaded without keras_lowrank",
             "Each file was loaded by a fresh Python in which `import keras_lowrank` fails"
             + (" (but for model.keras: its low-rank layers sit inside the model's own layers, which "
                "Keras rebuilds from their code, so keras_lowrank puts them back on loading)"
                if keras_needs_us else "")
             + f", run on {common.length(check_x)} test examples and compared with the fine-tuned low-rank model "
             f"(tolerance 1e-5 · max(1, max |output|); matrix products in full float32 on both "
             f"sides, no TF32).\n\n"
             + common.markdown_table(["format", "check", "largest difference", "tolerance", "detail"],
                                     check_rows)),
        ]
        record = {"data": arrays["description"], "converted_layers": converted,
                  "accuracy": {"before": before, "after_svd": after_svd, "after": after,
                               "after_quantisation": quantised},
                  "parameters": {"before": model.count_params(), "after": compact.count_params()},
                  "file_sizes": {"before": sizes_before, "after": sizes_after},
                  "summary": summary.to_dict(), "reload_checks": checks,
                  "exported_forms": written["forms"], "export_timings": written["timings"],
                  "fine_tuning": finetuning, "fine_tuning_held_out": held_out, "quantize": quantize,
                  "budget_search": search,
                  "settings": {"budget": args.budget, "tol": args.tol, "rank": args.rank, "max_drop": max_drop,
                               "calibration_examples": n_calibration, "spectral_weight": args.spectral_weight,
                               "finetune_epochs": args.finetune_epochs, "formats": list(args.formats),
                               "prefer": prefer}}
        _plot(summary, os.path.join(folder, "compression.png"))
        common.write_report(folder, f"Compression of {os.path.basename(args.model)}", meta, sections, record)
    print(f"accuracy {before:.4f} → {after:.4f}; parameters {model.count_params():,} → "
          f"{compact.count_params():,}; wrote {args.output}/ (report.md, report.json, "
          f"compression.png, export/)")
    failed = [c["format"] for c in checks if not c["passed"]]
    if failed:
        print(f"error: the exported {', '.join(failed)} file(s) do not reproduce the model "
              f"(see {args.output}/report.md)", file=sys.stderr)
        return 1
    return 0


def _forms_text(forms, prefer):
    """The report's line on the exported forms: how many layers as factor pairs, which dense."""
    import keras

    dense = [path for path, form in forms.items() if form == "dense"]
    why = ("fewer weights" if prefer == "size" else
           f"timed faster here, on {keras.backend.backend()}, on a batch of test inputs")
    return (f"--prefer {prefer} ({why}): {len(forms) - len(dense)} layer(s) as factor pairs"
            + (f", {len(dense)} with the kernel multiplied back: {', '.join(dense)}" if dense else ""))


CALIBRATION_EXAMPLES = 256
#: the budgets ``--max-drop`` tries, largest first: 71 % down to 1.1 % in steps of √2
BUDGET_LADDER = tuple(round(2 ** (-k / 2), 4) for k in range(1, 14))
#: compresses every trained model with a layer worth factorising (benchmarks/compress_budget.py,
#: docs/benchmarks.md: at 25 % the digits MLP and the MNIST-1D CNN keep their accuracy)
DEFAULT_BUDGET = 0.25


def _convert(model, args, budget, calibration, how):
    """``to_low_rank`` as the command asks, and the warnings it gave; a JobError when no
    layer converts (its warnings, which say why, in the one error line)."""
    from keras_lowrank import compression
    from keras_lowrank._keras_compat import layer_paths
    from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            low = compression.to_low_rank(model, rank=args.rank, budget=budget,
                                          tol=args.tol if args.tol is not None else 0.1,
                                          spectral_weight=args.spectral_weight, data=calibration)
        except ValueError as error:
            raise JobError(f"MODEL: {error}") from None
    if not any(isinstance(layer, DynamicLowRankBase) for _, layer in layer_paths(low)):
        why = " ".join(str(w.message) for w in caught)
        raise JobError("MODEL: no Dense, Conv1D or Conv2D layer of this model has a low-rank form worth "
                       f"storing at {how}; nothing to compress. {why}")
    return low, caught


def _search_budget(model, args, calibration, x_val, y_val):
    """``--max-drop``: the budgets of BUDGET_LADDER, largest first, each factorised for
    the calibration data and scored on the held-out examples (before any fine-tuning,
    which is kept afterwards only if it helps there: the final model stays within the
    drop); stops at the first that loses more than ``max_drop`` points and returns the
    last that did not, ``_convert``'s result for it and the rows tried."""
    from keras_lowrank import compression

    reference = common.accuracy(model, x_val, y_val)
    tried, chosen = [], None
    for budget in BUDGET_LADDER:
        try:
            converted = _convert(model, args, budget, calibration, f"--budget {budget:g}")
        except JobError:  # below this budget no layer is worth storing
            break
        low = converted[0]
        score = common.accuracy(low, x_val, y_val)
        drop = 100.0 * (reference - score)
        tried.append({"budget": budget, "held_out_accuracy": score, "drop_points": drop,
                      "parameters": compression.compression_summary(low).total["model_exported_params"],
                      "within": bool(drop <= args.max_drop)})
        print(f"budget {budget:.2%}: held-out accuracy {score:.4f} ({drop:+.2f} points below the model's "
              f"{reference:.4f})")
        if drop > args.max_drop:
            break
        chosen, kept = budget, converted
    if chosen is None:
        first = f"{tried[0]['drop_points']:.2f} points at {BUDGET_LADDER[0]:.0%}" if tried else "no layer converts"
        raise JobError(f"--max-drop {args.max_drop:g}: no budget keeps the held-out accuracy within "
                       f"{args.max_drop:g} percentage points of the model's ({reference:.4f}) before fine-tuning "
                       f"({first}); allow a larger drop, or give --budget and let DLRT fine-tuning "
                       "recover it.")
    return chosen, kept, {"reference_held_out_accuracy": reference, "held_out_examples": common.length(y_val),
                         "max_drop_points": args.max_drop, "chosen": chosen, "tried": tried}


def _search_text(search):
    rows = [[f"{t['budget']:.2%}", f"{t['parameters']:,}", f"{t['held_out_accuracy']:.4f}",
             f"{t['drop_points']:+.2f}", "kept" if t["budget"] == search["chosen"] else
             ("within" if t["within"] else "**over**")] for t in search["tried"]]
    return (f"Budgets tried largest first, each factorised for the calibration data and scored on "
            f"{search['held_out_examples']} held-out training examples (the model: "
            f"{search['reference_held_out_accuracy']:.4f}); the search stops at the first that loses more "
            f"than {search['max_drop_points']:g} percentage points and keeps the last that did not.\n\n"
            + common.markdown_table(["budget", "exported parameters", "held-out accuracy", "drop (points)", ""],
                                    rows))


def _original_sizes(model, path, formats):
    """The original model's size in each format (written to a scratch folder)."""
    sizes = {"keras": os.path.getsize(path)}
    if set(formats) & {"saved_model", "tflite"}:
        from keras_lowrank.compression.export import write_tensorflow_files

        with tempfile.TemporaryDirectory() as scratch:
            saved = os.path.join(scratch, "saved_model")
            tflite = os.path.join(scratch, "model.tflite") if "tflite" in formats else None
            write_tensorflow_files(model, path, saved, tflite)
            sizes["saved_model"] = common.size_on_disk(saved)
            if tflite is not None:
                sizes["tflite"] = os.path.getsize(tflite)
    if "onnx" in formats:
        from keras_lowrank.compression.export import write_onnx

        with tempfile.TemporaryDirectory() as scratch:
            write_onnx(model, path, os.path.join(scratch, "model.onnx"))
            sizes["onnx"] = os.path.getsize(os.path.join(scratch, "model.onnx"))
    return sizes


def _plot(summary, path):
    from keras_lowrank._optional import require

    require("matplotlib", "Plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary.rows if r["rank"] is not None]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(rows), 3.4))
    positions = np.arange(len(rows))
    ax.bar(positions - 0.2, [r["dense_params"] for r in rows], 0.4, label="dense")
    ax.bar(positions + 0.2, [r["exported_params"] for r in rows], 0.4, label="exported")
    for p, r in zip(positions, rows):
        ax.annotate(f"r={r['rank']}", (p + 0.2, r["exported_params"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, [r["layer"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("parameters")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Parameters per converted layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
