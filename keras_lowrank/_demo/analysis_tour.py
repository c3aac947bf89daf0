"""Representation analysis on real data (keras_lowrank/methods.md §3–§4).

Two demonstrations, each on digits (2-D CNN) and MNIST-1D (1-D CNN), both the
``small_cnn`` of the main job:

1. CKA maps: a standard model, a PGD-adversarially-trained one and
   an LR model (LowRankProjection on the penultimate layer). Each model's map
   with itself and its block-structure score (mean CKA between distinct
   layers), and the map of the standard model against each other model.
2. A class-selectivity sweep: the same CNN trained with the
   selectivity regularizer at α < 0, 0, > 0; per α (mean over seeds): clean
   accuracy, mean class selectivity on the test set, accuracy under Gaussian
   noise, under common corruptions and under FGSM, and the dimensionality (PCs for 95 % of the variance)
   of the change of the "features" layer under each perturbation. The seed's
   claims are checked and the verdict printed.
"""

import time

import keras
import numpy as np

from keras_lowrank import data
from keras_lowrank._demo.models import small_cnn
from keras_lowrank.analysis import cka_map, class_selectivity, perturbation_dimensionality
from keras_lowrank.regularizers import SelectivityRegularizedModel
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel, all_corruptions

CKA_LAYER_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)
ALPHAS = (-2.0, -1.0, 0.0, 1.0, 2.0)
# Inputs lie in [0, 1]; perturbation sizes follow each dataset's input spread
# (pixel std ≈ 0.3 on digits, signal std ≈ 0.1 on MNIST-1D).
# The LR layer keeps its defaults on both (the relative loss needs no per-dataset
# weight; with the paper's loss λ_c = 4 suited digits and collapsed MNIST-1D).
SETTINGS = {"digits": {"sigma": 0.2, "fgsm_eps": 0.05, "pgd_eps": 0.1},
            "mnist1d": {"sigma": 0.03, "fgsm_eps": 0.01, "pgd_eps": 0.02}}
LEARNING_RATE, BATCH_SIZE = 3e-3, 64
# Mean accuracy over the corruptions at this severity (all 8 on images; the 5
# per-value ones — noises, brightness, contrast — on MNIST-1D's signals).
CORRUPTION_SEVERITY = 3


def _arrays(dataset):
    loader = {"digits": data.load_digits_arrays, "mnist1d": data.load_mnist1d_arrays}[dataset]
    return loader("train"), loader("test")


def _compile(model, learning_rate=LEARNING_RATE):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _accuracy(model, x, y, perturbation=None):
    target = model if perturbation is None else PerturbedModel(model, perturbation)
    _compile(target)
    return float(target.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)["accuracy"])


def train_cnn(dataset, variant, seed, epochs, alpha=0.0, rank=10):
    """small_cnn (inputs standardised inside) trained on ``dataset``: variant
    "standard", "pgd_trained" (PGD-5 at the dataset's pgd_eps, Madry et al.),
    "lr" (LR layer of ``rank``) or "selectivity" (regularizer weight ``alpha``)."""
    (x, y), _ = _arrays(dataset)
    keras.utils.set_random_seed(seed)
    model = small_cnn(x.shape[1:], int(y.max()) + 1, seed=seed,
                      lr_rank=rank if variant == "lr" else None,
                      standardize=(x.mean(), x.var()))
    pgd = PGD(SETTINGS[dataset]["pgd_eps"], steps=5, seed=seed)
    trainer = {"standard": lambda: model, "lr": lambda: model,
               "pgd_trained": lambda: PerturbedModel(model, pgd),
               "selectivity": lambda: SelectivityRegularizedModel(model, alpha)}[variant]()
    _compile(trainer).fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
    return model


# ---------------------------------------------------------------- CKA maps

def cka_section(models, x_test, accuracies=None, path=None, title=""):
    """Within-model maps, block-structure scores and maps against "standard"."""
    within = {label: cka_map(m, x_test, layers=CKA_LAYER_TYPES) for label, m in models.items()}
    across = {label: cka_map(models["standard"], x_test, model_b=m, layers=CKA_LAYER_TYPES,
                             layers_b=CKA_LAYER_TYPES)
              for label, m in models.items() if label != "standard"}
    rows = []
    for label in models:
        row = {"model": label, "block_structure": within[label].block_structure_score(),
               "accuracy": (accuracies or {}).get(label, float("nan"))}
        if label in across:  # same architecture: the i-th layers correspond
            cross = across[label]
            row["cka_vs_standard"] = {name: float(cross.matrix[i, i])
                                      for i, name in enumerate(cross.rows)}
        rows.append(row)
    if path:
        _plot_cka(within, across, path, title)
    return rows, within, across


def _plot_cka(within, across, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(within), len(across))
    fig, axes = plt.subplots(2, columns, figsize=(3.6 * columns, 7.2), squeeze=False)
    for ax, (label, result) in zip(axes[0], within.items()):
        result.draw(ax, f"{label} × {label}\nblock score {result.block_structure_score():.2f}",
                    colorbar=False)
    for ax, (label, result) in zip(axes[1], across.items()):
        image = result.draw(ax, f"standard (rows) × {label}", colorbar=False)
    for ax in list(axes[0][len(within):]) + list(axes[1][len(across):]):
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="CKA (unbiased, minibatch)", shrink=0.6)
    fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def format_cka_table(dataset, rows):
    layers = next(iter(r["cka_vs_standard"] for r in rows if "cka_vs_standard" in r), {})
    head = ["model", "test acc", "block-structure score"] + [f"CKA vs standard: {n}"
                                                             for n in layers]
    lines = [f"CKA on {dataset} (small CNN; seed 0)", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['accuracy']:.1%}", f"{r['block_structure']:.3f}"]
        cells += [f"{r['cka_vs_standard'][n]:.3f}" if "cka_vs_standard" in r else "1 (itself)"
                  for n in layers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cka(dataset, epochs, seed=0, output=None, models=None, echo=print):
    """Trains (or takes) standard / pgd_trained / lr models; CKA table + figure."""
    start = time.time()
    _, (x_test, y_test) = _arrays(dataset)
    models = dict(models or {})
    for variant in ("standard", "pgd_trained", "lr"):
        if variant not in models:
            models[variant] = train_cnn(dataset, variant, seed, epochs)
    accuracies = {label: _accuracy(m, x_test, y_test) for label, m in models.items()}
    path = f"{output}/cka_{dataset}.png" if output else None
    rows, _, _ = cka_section(models, x_test, accuracies, path, f"CKA maps, {dataset} test set")
    echo(format_cka_table(dataset, rows) + f"\n({time.time() - start:.0f} s)")
    return rows


# ---------------------------------------------------- selectivity sweep

def selectivity_record(model, x_test, y_test, seed, sigma, fgsm_eps):
    noise, attack = GaussianNoise(sigma, seed=seed), FGSM(fgsm_eps)
    dims = {}
    for label, perturbation in (("noise", GaussianNoise(sigma, seed=seed)), ("fgsm", attack)):
        result = perturbation_dimensionality(model, (x_test, y_test), perturbation,
                                             layers=["features"])["features"]
        dims[label] = result.variance_rank
    corruptions = all_corruptions((CORRUPTION_SEVERITY,), seed=seed, image=x_test.ndim == 4)
    return {
        "clean": _accuracy(model, x_test, y_test),
        "selectivity": class_selectivity(model, (x_test, y_test)).mean,
        "noise": _accuracy(model, x_test, y_test, noise),
        "corruptions": float(np.mean([_accuracy(model, x_test, y_test, c) for c in corruptions])),
        "fgsm": _accuracy(model, x_test, y_test, attack),
        "dim_noise": dims["noise"],
        "dim_fgsm": dims["fgsm"],
    }


SWEEP_KEYS = ("clean", "selectivity", "noise", "corruptions", "fgsm", "dim_noise", "dim_fgsm")


def run_selectivity_sweep(dataset, epochs, alphas=ALPHAS, seeds=(0, 1, 2), output=None,
                          echo=print):
    """Trains small_cnn with the selectivity regularizer at each α and seed."""
    start = time.time()
    _, (x_test, y_test) = _arrays(dataset)
    per_alpha = {alpha: [] for alpha in alphas}
    for seed in seeds:
        for alpha in alphas:
            model = train_cnn(dataset, "selectivity", seed, epochs, alpha=alpha)
            per_alpha[alpha].append(selectivity_record(
                model, x_test, y_test, seed, **{k: SETTINGS[dataset][k]
                                                for k in ("sigma", "fgsm_eps")}))
    means = {alpha: {k: float(np.mean([r[k] for r in records])) for k in SWEEP_KEYS}
             for alpha, records in per_alpha.items()}
    echo(format_sweep_table(dataset, means, len(seeds)))
    verdicts = seed_claims(means)
    for claim, holds in verdicts.items():
        echo(f"  {'appears' if holds else 'does NOT appear'}: {claim}")
    echo(f"({time.time() - start:.0f} s)")
    if output:
        plot_sweep(means, f"{output}/selectivity_{dataset}.png", dataset)
    return {"per_alpha": {str(a): r for a, r in per_alpha.items()},
            "mean": {str(a): m for a, m in means.items()},
            "claims": verdicts}


def seed_claims(means):
    """The claims of Leavitt & Morcos (2020), lowest α vs highest α."""
    low, high = means[min(means)], means[max(means)]
    selectivity = [low["selectivity"], high["selectivity"]]
    if 0.0 in means:  # the α = 0 run must lie between: low < it ≤ high
        selectivity.insert(1, means[0.0]["selectivity"])
    return {
        "α < 0 lowers and α > 0 raises mean selectivity":
            selectivity[0] < selectivity[1] <= selectivity[-1],
        "lower selectivity → more accurate under Gaussian noise": low["noise"] > high["noise"],
        "lower selectivity → more accurate under corruptions": low["corruptions"] > high["corruptions"],
        "lower selectivity → less accurate under FGSM": low["fgsm"] < high["fgsm"],
        "lower selectivity → higher dimensionality of the FGSM change":
            low["dim_fgsm"] > high["dim_fgsm"],
        "…a larger rise for FGSM than for noise":
            low["dim_fgsm"] - high["dim_fgsm"] > low["dim_noise"] - high["dim_noise"],
    }


def format_sweep_table(dataset, means, num_seeds):
    sigma, eps = SETTINGS[dataset]["sigma"], SETTINGS[dataset]["fgsm_eps"]
    head = ["α", "clean acc", "mean selectivity", f"acc, noise σ={sigma}",
            f"acc, corruptions (severity {CORRUPTION_SEVERITY})", f"acc, FGSM ε={eps}",
            "dim Δ features, noise", "dim Δ features, FGSM"]
    lines = [f"Class-selectivity sweep on {dataset} (small CNN, mean of {num_seeds} seeds; "
             "dim = PCs for 95% of the variance)",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for alpha, m in means.items():
        lines.append(f"| {alpha:+g} | {m['clean']:.1%} | {m['selectivity']:.3f} | "
                     f"{m['noise']:.1%} | {m['corruptions']:.1%} | {m['fgsm']:.1%} | "
                     f"{m['dim_noise']:.1f} | {m['dim_fgsm']:.1f} |")
    return "\n".join(lines)


def plot_sweep(means, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = list(means)
    series = lambda key: [means[a][key] for a in alphas]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(alphas, series("selectivity"), "o-")
    axes[0].set_ylabel("mean class selectivity")
    sigma, eps = SETTINGS[dataset]["sigma"], SETTINGS[dataset]["fgsm_eps"]
    for key, label in (("clean", "clean"), ("noise", f"noise σ={sigma}"),
                       ("corruptions", f"corruptions (sev. {CORRUPTION_SEVERITY})"),
                       ("fgsm", f"FGSM ε={eps}")):
        axes[1].plot(alphas, series(key), "o-", label=label)
    axes[1].set_ylabel("accuracy")
    axes[1].legend()
    axes[2].plot(alphas, series("dim_noise"), "o-", label="noise")
    axes[2].plot(alphas, series("dim_fgsm"), "o-", label="FGSM")
    axes[2].set_ylabel("dim of Δ features (95% var.)")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("α (selectivity regularizer)")
    fig.suptitle(f"Selectivity sweep, {dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_analysis(datasets=("digits", "mnist1d"), epochs=20, seeds=(0, 1, 2), output=None,
                 models=None, echo=print):
    """Both demonstrations on each dataset; ``models`` may hold already trained
    {"digits": {"standard": ..., ...}} models to reuse."""
    results = {}
    for dataset in datasets:
        echo("")
        cka = run_cka(dataset, epochs, seeds[0], output, (models or {}).get(dataset), echo)
        echo("")
        sweep = run_selectivity_sweep(dataset, epochs, seeds=seeds, output=output, echo=echo)
        results[dataset] = {"cka": cka, "selectivity": sweep}
    return results
