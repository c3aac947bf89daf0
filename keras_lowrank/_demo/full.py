"""The main job: a small CNN on real data, with and without the LR layer.

Trains both models with the same seeds, then reports (mean ± std over seeds)
clean accuracy, the ranks of the penultimate representation ("features"),
accuracy under Gaussian noise, and the accuracy of the LR model when its features are stored as r coefficients.
Writes results.json, spectra.png and both models (.keras) to the output folder.
"""

import json
import os
import time

import keras
import numpy as np

from keras_lowrank import analysis, data
from keras_lowrank._demo.models import small_cnn
from keras_lowrank._files import staged_folder
from keras_lowrank.robustness import (
    FGSM,
    PGD,
    PerturbedModel,
    all_corruptions,
    evaluate_robustness,
)

ATTACK_EPS = (0.05, 0.1, 0.2)


def train_model(model, train, epochs, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, epochs=epochs, verbose=0, shuffle=False)  # the dataset shuffles
    return model


def compressed_feature_accuracy(model, test):
    """Accuracy when the head sees decode(encode(features)): r numbers per sample."""
    lr = model.get_layer("low_rank")
    lr.threshold()
    features = keras.Model(model.inputs, model.get_layer("features").output)
    head = model.get_layer("logits")
    correct = total = 0
    for x, y in test.as_numpy_iterator():
        codes = lr.encode(features.predict_on_batch(x))
        logits = head(lr.decode(codes))
        correct += int(np.sum(np.argmax(keras.ops.convert_to_numpy(logits), -1) == y))
        total += len(y)
    return correct / total


def lr_arguments(projection_weight=None, lr_loss="relative"):
    """The LR layer's arguments: its defaults unless a weight or the paper's loss is asked."""
    kwargs = {"loss": lr_loss}
    if projection_weight is not None:
        kwargs["projection_weight"] = projection_weight
    return kwargs


def train_and_measure(info, train, test, lr_rank, lr_kwargs, sigmas,
                      seed, epochs, learning_rate):
    """One model: its metrics record and the spectrum of its features."""
    start = time.time()
    keras.utils.set_random_seed(seed)
    model = small_cnn(info.input_shape, info.num_classes, lr_rank=lr_rank,
                      lr_kwargs=lr_kwargs, seed=seed)
    train_model(model, train, epochs, learning_rate)
    record = {"accuracy": model.evaluate(test, verbose=0, return_dict=True)["accuracy"]}
    ranks = analysis.representation_ranks(model, test, layers=["features"])["features"]
    record.update(effective_rank=ranks.effective_rank, stable_rank=ranks.stable_rank,
                  variance_rank_99=ranks.variance_rank)
    noisy = evaluate_robustness(model, test, noise_sigmas=sigmas, large_eps=None, seed=seed)
    record.update({f"accuracy_sigma_{s}": noisy.accuracy("gaussian", s) for s in sigmas})
    if lr_rank is not None:
        record["compressed_feature_accuracy"] = compressed_feature_accuracy(model, test)
    record["train_seconds"] = round(time.time() - start, 1)
    return model, record, ranks.singular_values


def run_demo(output, dataset="digits", epochs=40, rank=10, projection_weight=None,
             lr_loss="relative", sigmas=(0.1, 0.2, 0.3), seeds=(0, 1, 2), learning_rate=1e-3, echo=print,
             dlrt_datasets=("digits", "mnist1d"), dlrt_epochs=20,
             analysis_datasets=("digits", "mnist1d"), analysis_epochs=20, overwrite=False):
    """Trains the baseline and the LR model for each seed; reports mean ± std.

    Everything is written to a temporary folder that becomes ``output`` when the
    run ends (an interrupted run leaves ``output`` as it was); an existing
    non-empty ``output`` raises FileExistsError unless ``overwrite=True``."""
    final = output
    with staged_folder(output, overwrite) as output:
        results = _run_demo(output, dataset, epochs, rank, lr_arguments(projection_weight, lr_loss),
                            sigmas, seeds,
                            learning_rate, echo, dlrt_datasets, dlrt_epochs,
                            analysis_datasets, analysis_epochs)
    figures = "".join(f", cka_{d}.png, selectivity_{d}.png" for d in analysis_datasets or ())
    echo(f"\nwrote {final}/: results.json, spectra.png, robustness.png{figures}, "
         "robustness.md, baseline.keras, lr.keras, pgd_trained.keras")
    return results


def _run_demo(output, dataset, epochs, rank, lr_kwargs, sigmas, seeds, learning_rate,
              echo, dlrt_datasets, dlrt_epochs, analysis_datasets, analysis_epochs):
    test, _ = data.load(dataset, "test", batch_size=256)
    info = data.load(dataset, "train")[1]
    echo(f"keras_lowrank demo: {dataset} {info.input_shape}, {info.num_examples} "
         f"train images, backend {keras.backend.backend()}, {epochs} epochs, "
         f"seeds {list(seeds)}")
    results = {"dataset": dataset, "epochs": epochs, "rank": rank,
               "lr_arguments": lr_kwargs, "seeds": list(seeds),
               "per_seed": {"baseline": [], "lr": []}}
    spectra, first_models = {}, {}
    for seed in seeds:
        train, _ = data.load(dataset, "train", batch_size=32, seed=seed)
        for label, lr_rank in (("baseline", None), ("lr", rank)):
            model, record, spectrum = train_and_measure(
                info, train, test, lr_rank, lr_kwargs, sigmas, seed,
                epochs, learning_rate)
            results["per_seed"][label].append(record)
            echo(f"  seed {seed}: trained {label} in {record['train_seconds']} s")
            if seed == seeds[0]:
                spectra[label] = spectrum
                first_models[label] = model
                model.save(os.path.join(output, f"{label}.keras"))
    results["mean"] = {label: summarize(records)
                       for label, records in results["per_seed"].items()}
    echo("")
    echo(format_table(results["mean"], sigmas, len(seeds)))
    plot_spectra(spectra, rank, os.path.join(output, "spectra.png"))
    results["robustness"] = robustness_section(first_models, info, test, sigmas,
                                               seeds[0], epochs, learning_rate,
                                               output, echo)
    if dlrt_datasets:
        from keras_lowrank._demo.dlrt_table import run_dlrt_table

        echo(f"\nDynamical low-rank training (DLRT), {dlrt_epochs} epochs per model")
        results["dlrt"] = run_dlrt_table(dlrt_datasets, seeds, dlrt_epochs, echo=echo)
    if analysis_datasets:
        from keras_lowrank._demo.analysis_tour import run_analysis

        echo(f"\nRepresentation analysis (CKA maps, class selectivity), {analysis_epochs} "
             "epochs per model")
        results["analysis"] = run_analysis(analysis_datasets, analysis_epochs, seeds, output,
                                           echo=echo)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def robustness_section(models, info, test, sigmas, seed, epochs, learning_rate,
                       output, echo):
    """Attacks and noise on the seed's models and a PGD-trained one (Madry et al.)."""
    start = time.time()
    keras.utils.set_random_seed(seed)
    robust = small_cnn(info.input_shape, info.num_classes, seed=seed)
    train, _ = data.load(info.name, "train", batch_size=32, seed=seed)
    train_model(PerturbedModel(robust, PGD(0.1, steps=5, seed=seed)), train, epochs,
                learning_rate)
    robust.save(os.path.join(output, "pgd_trained.keras"))
    models = dict(models, pgd_trained=robust)
    attacks = [FGSM(e) for e in ATTACK_EPS] + [PGD(e, steps=10, seed=seed) for e in ATTACK_EPS]
    corruptions = all_corruptions(severities=(1, 3, 5), seed=seed)
    reports = {label: evaluate_robustness(model, test, attacks=attacks,
                                          noise_sigmas=sigmas, corruptions=corruptions,
                                          seed=seed, black_box=True)
               for label, model in models.items()}
    echo(f"\nRobustness (seed {seed}; pgd_trained: PGD-5 ε=0.1 adversarial training; "
         f"{time.time() - start:.0f} s)")
    echo(compare_reports(reports))
    plot_robustness(reports, os.path.join(output, "robustness.png"))
    with open(os.path.join(output, "robustness.md"), "w") as f:
        for label, report in reports.items():
            f.write(f"## {label}\n\n{report.to_markdown()}\n\n")
    return {label: report.as_dict() for label, report in reports.items()}


def compare_reports(reports):
    """One row per perturbation, one accuracy column per model, then the checks."""
    labels = list(reports)
    names = [row["name"] for row in next(iter(reports.values())).rows]
    width = max(map(len, names))
    lines = [f"{'perturbation':<{width}}  " + "  ".join(f"{l:>11}" for l in labels)]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  " + "  ".join(
            f"{reports[l].rows[i]['accuracy']:>11.4f}" for l in labels))
    lines.append(f"{'mean over corruptions':<{width}}  " + "  ".join(
        f"{reports[l].mean_corruption_accuracy():>11.4f}" for l in labels))
    for label, report in reports.items():
        failed = [c.name for c in report.checks if not c.passed]
        lines.append(f"gradient-masking checks, {label}: "
                     + ("all passed" if not failed else "FAILED: " + "; ".join(failed)))
    return "\n".join(lines)


def plot_robustness(reports, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, report in reports.items():
        for ax, family in zip(axes, ("PGD", "gaussian")):
            points = sorted((r["size"], r["accuracy"]) for r in report.rows
                            if r["family"] == family and "probe" not in r["name"])
            ax.plot(*zip(*([(0.0, report.clean_accuracy)] + points)), "o-", label=label)
    axes[0].set(xlabel="ε (L∞, pixels in [0, 1])", ylabel="accuracy",
                title="PGD-10", ylim=(0, 1.02))
    axes[1].set(xlabel="σ", ylabel="accuracy", title="Gaussian noise", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(records):
    """Mean and standard deviation over seeds of every metric."""
    return {key: {"mean": float(np.mean([r[key] for r in records])),
                  "std": float(np.std([r[key] for r in records]))}
            for key in records[0]}


def format_table(means, sigmas, num_seeds):
    columns = [("clean acc", "accuracy", 4), ("eff. rank", "effective_rank", 1),
               ("var. rank 99%", "variance_rank_99", 1), ("stable rank", "stable_rank", 2)]
    columns += [(f"acc σ={s}", f"accuracy_sigma_{float(s)}", 4) for s in sigmas]
    columns += [("acc from r coeffs", "compressed_feature_accuracy", 4)]
    rows = [["model"] + [title for title, _, _ in columns]]
    for label, metrics in means.items():
        row = [label]
        for _, key, digits in columns:
            cell = metrics.get(key)
            row.append("-" if cell is None else
                       f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(mean ± std over {num_seeds} seeds; test split)")
    return "\n".join(lines)


def plot_spectra(spectra, rank, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in spectra.items():
        energy = s**2 / np.sum(s**2)
        ax.semilogy(np.arange(1, len(s) + 1), energy, "o-", ms=3, label=label)
    ax.set_ylim(1e-6, 1.0)  # below this: dead units and float rounding
    ax.axvline(rank, color="gray", ls="--", lw=1, label=f"target rank {rank}")
    ax.set_xlabel("component")
    ax.set_ylabel("fraction of variance (σᵢ² / Σσ²)")
    ax.set_title("Spectrum of the penultimate representation (test set)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
