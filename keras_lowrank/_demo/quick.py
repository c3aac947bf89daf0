"""``keras-lowrank demo``: every capability once, in ≤ 3 minutes on 2 CPU cores.

On scikit-learn's digits (real data, offline): a small CNN trained with and
without the LR layer (one seed), then the command line's own jobs run on the
two saved models as a user would run them on theirs — ``compress`` (DLRT
fine-tuning, export, re-load check), ``evaluate`` (FGSM, PGD, AutoAttack-fast,
noise, checks) and ``analyze`` (ranks, CKA against the other model, class
selectivity). README.md in the output folder gathers one table per capability
and the command that reproduces each part; ``--full`` gives the 3-seed tables.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_lowrank import analysis, data
from keras_lowrank._demo.models import small_cnn
from keras_lowrank._files import staged_folder
from keras_lowrank.cli import analyze, common, compress, evaluate

EPOCHS = 15
RANK = 10
EPS = 0.1
SIGMA = 0.2


def _train(x, y, lr_rank, seed):
    keras.utils.set_random_seed(seed)
    model = small_cnn(x.shape[1:], 10, lr_rank=lr_rank, seed=seed)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0)
    return model


def _job(module, meta, argv, **settings):
    """Runs a subcommand in this process, its report recording ``argv``."""
    defaults = {"data": "digits", "data_dir": None, "limit": None, "clip": [0.0, 1.0], "overwrite": False,
                "backend": None, "quiet": True}
    args = argparse.Namespace(**{**defaults, **settings})
    status = module.run(args, {**meta, "command": common.command_line(argv)})
    if status != 0:
        raise RuntimeError(f"keras-lowrank {argv[0]} ended with status {status}")
    with open(os.path.join(args.output, "report.json")) as handle:
        return json.load(handle)


def run_quick_demo(args, meta, echo=print):
    start = time.time()
    final = args.output
    with staged_folder(args.output, args.overwrite, "--output") as out:
        summary = _run(out, final, args.seed, meta, echo)
        summary["seconds"] = round(time.time() - start, 1)
        with open(os.path.join(out, "summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
    echo(f"\nwrote {final}/ in {time.time() - start:.0f} s: README.md (the tables), summary.json, models/, "
         "compress/, evaluate_baseline/, evaluate_lr/, analyze/")
    return 0


def _run(out, final, seed, meta, echo):
    (x, y), (x_test, y_test) = data.load_digits_arrays("train"), data.load_digits_arrays("test")
    echo(f"keras_lowrank demo on digits ({len(x)} train / {len(x_test)} test 8×8 images), backend "
         f"{keras.backend.backend()}, seed {seed}")
    models, lr_rows, record = {}, [], {"seed": seed, "epochs": EPOCHS, "rank": RANK}
    os.makedirs(os.path.join(out, "models"))
    for label, lr_rank in (("baseline", None), ("lr", RANK)):
        began = time.time()
        model = _train(x, y, lr_rank, seed)
        ranks = analysis.representation_ranks(model, x_test, layers=["features"])["features"]
        row = {"accuracy": common.accuracy(model, x_test, y_test),
               "variance_rank_99": ranks.variance_rank, "effective_rank": ranks.effective_rank,
               "seconds": round(time.time() - began, 1)}
        record[label] = row
        models[label] = os.path.join(out, "models", f"{label}.keras")
        model.save(models[label])
        echo(f"  trained {label} in {row['seconds']} s: accuracy {row['accuracy']:.4f}")
        lr_rows.append([label if lr_rank is None else f"LR layer, rank {RANK}", f"{row['accuracy']:.4f}",
                        row["variance_rank_99"],
                        f"{row['effective_rank']:.1f}"])
    shown = {label: f"{final}/models/{label}.keras" for label in models}

    echo("compress: baseline → low-rank, DLRT fine-tuning, export, re-load check")
    formats = compress.default_formats()
    argv = ["compress", shown["baseline"], "--data", "digits", "--finetune-epochs", "2",
            "--formats", *formats,
            "--output", f"{final}/compress", "--seed", str(seed)]
    compressed = _job(compress, meta, argv, model=models["baseline"], output=os.path.join(out, "compress"),
                      seed=seed, budget=None, tol=None, rank=None, finetune_epochs=2, spectral_weight=0.0,
                      learning_rate=1e-3, batch_size=32, formats=formats, check_examples=256)
    record["compress"] = {k: compressed[k] for k in ("accuracy", "parameters", "file_sizes", "reload_checks")}

    attacks = [f"fgsm:{EPS}", f"pgd:{EPS}", f"autoattack-fast:{EPS}"]
    reports = {}
    for label in models:
        echo(f"evaluate: {label} under {', '.join(attacks)}, noise σ={SIGMA}")
        argv = ["evaluate", shown[label], "--data", "digits", "--attacks", *attacks, "--noise", str(SIGMA),
                "--corruptions", "3", "--output", f"{final}/evaluate_{label}", "--seed", str(seed)]
        reports[label] = _job(evaluate, meta, argv, model=models[label], output=os.path.join(out, f"evaluate_{label}"),
                              seed=seed, attacks=attacks, noise=[SIGMA], corruptions=[3], probe=True)["report"]
    record["evaluate"] = reports

    echo("analyze: baseline, CKA against the LR model")
    argv = ["analyze", shown["baseline"], "--compare", shown["lr"], "--data", "digits",
            "--output", f"{final}/analyze", "--seed", str(seed)]
    analyzed = _job(analyze, meta, argv, model=models["baseline"], compare=models["lr"], layers=None,
                    output=os.path.join(out, "analyze"), seed=seed)
    record["analyze"] = {"cka_compare": analyzed["cka_compare"],
                         "selectivity_mean": (analyzed["selectivity"] or {}).get("mean")}
    text = _readme(record, lr_rows, compressed, reports, analyzed, final)
    with open(os.path.join(out, "README.md"), "w") as handle:
        handle.write(text)
    echo("\n" + text)
    return record


def _readme(record, lr_rows, compressed, reports, analyzed, final):
    acc, params, sizes = compressed["accuracy"], compressed["parameters"], compressed["file_sizes"]
    checks = ", ".join(f"{c['format']} {'pass' if c['passed'] else 'FAIL'}" for c in compressed["reload_checks"])
    size_text = "; ".join(f"{k} {common.human_size(sizes['before'][k])} → {common.human_size(sizes['after'][k])}"
                          for k in sizes["after"])
    names = [row["name"] for row in reports["baseline"]["rows"] if not row["family"].startswith("corruption")]
    robust_rows = [[name] + [f"{next(r['accuracy'] for r in reports[m]['rows'] if r['name'] == name):.4f}"
                             for m in ("baseline", "lr")] for name in names]
    corrupted = {m: [r["accuracy"] for r in reports[m]["rows"] if r["family"].startswith("corruption")]
                 for m in reports}
    robust_rows.insert(-1, [f"mean of {len(corrupted['baseline'])} corruptions, severity 3"]
                       + [f"{np.mean(corrupted[m]):.4f}" for m in ("baseline", "lr")])
    failed = {m: [c["name"] for c in reports[m]["checks"] if not c["passed"]] for m in reports}
    cross = analyzed["cka_compare"]
    matrix = np.asarray(cross["matrix"])
    diagonal = ", ".join(f"{row} {matrix[i, cross['columns'].index(row)]:.3f}"
                         for i, row in enumerate(cross["rows"]) if row in cross["columns"])
    lines = [
        "# keras_lowrank demo (digits, one seed; `keras-lowrank demo --full` for mean ± std over 3 seeds)", "",
        f"## 1. The LR layer (small CNN, {record['epochs']} epochs)", "",
        common.markdown_table(["model", "test accuracy", "features: variance rank 99 %",
                               "effective rank"], lr_rows), "",
        "## 2. compress: the baseline made low-rank, fine-tuned with DLRT, exported", "",
        f"Accuracy {acc['before']:.4f} → {acc['after']:.4f}; parameters {params['before']:,} → {params['after']:,}; "
        f"files {size_text}; re-loaded without keras_lowrank: {checks}. Per layer: {final}/compress/report.md.", "",
        f"## 3. evaluate: robustness at ε={EPS} (L∞), noise σ={SIGMA}, corruptions", "",
        common.markdown_table(["perturbation", "baseline", "LR layer"], robust_rows), "",
        "Gradient-masking checks failed: " + ("; ".join(f"{m}: {', '.join(f) or 'none'}" for m, f in failed.items()))
        + f". Details: {final}/evaluate_baseline/report.md, {final}/evaluate_lr/report.md.", "",
        "## 4. analyze: CKA between the baseline's layers and the LR model's", "",
        f"Same-named layers: {diagonal}. Maps: {final}/analyze/cka_compare.png; ranks, spectra and class "
        f"selectivity in {final}/analyze/report.md.", "",
        "Each part is one command on your own model: the first line of each report.md's "
        "\"How this was run\" section.", ""]
    return "\n".join(lines)
