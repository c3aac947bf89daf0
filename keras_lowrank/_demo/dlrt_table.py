"""DLRT on real data: a miniature of the paper's table (keras_lowrank/methods.md §2).

An MLP (input → 512 → 512 → 512 → classes) on digits (flattened 8×8) and on
MNIST-1D: a dense baseline, DLRT (the two 512×512 layers as
DynamicLowRankDense, trained with the DLRT optimizer) and DLRT with the spectral
regularizer (β > 0), from scratch; and the dense baseline compressed after
training (``to_low_rank``: SVD of its kernels at rank 24, ≥ 90 % compression)
then fine-tuned with DLRT (the authors' initialisation "from a trained dense
layer", keras_lowrank/methods.md §2). Reported per variant, mean ± std over seeds: clean accuracy,
FGSM accuracy at several ε (inputs in [0, 1]), final ranks, compression rate of
the compressed layers. Ranks are truncated by each layer's tol before measuring,
so accuracy, ranks and compression describe the same model.
"""

import time

import keras
import numpy as np

from keras_lowrank import compression
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.optimizers import DLRT
from keras_lowrank.robustness import FGSM, PerturbedModel

WIDTH = 512
VARIANTS = ("dense", "dlrt", "dlrt_spectral", "dense_to_dlrt")
# dense_to_dlrt: the trained dense model's two 512×512 kernels as SVD rank 24
# (90.4 % compression; max_rank 24, so DLRT can only lower it), then half as
# many epochs as the others of DLRT at CONVERTED_TOL.
CONVERTED_RANK, CONVERTED_TOL = 24, 0.15
# FGSM ε per dataset, in input units ([0, 1]); MNIST-1D's spread is a third of digits'.
FGSM_EPS = {"digits": (0.02, 0.05, 0.1), "mnist1d": (0.005, 0.01, 0.02)}
# MNIST-1D signals in [0, 1] have std 0.1: standardised inside the model, the
# MLP learns (without it ≈ 48 % after 30 epochs).
STANDARDIZED = ("mnist1d",)


def mlp(num_inputs, num_classes, variant, max_rank=64, rank=32, tol=0.2, beta=0.1, seed=0,
        standardize=None):
    """``standardize=(mean, variance)`` puts a Normalization layer first (the
    model still takes [0, 1] inputs, the range FGSM's ε refers to)."""
    keras.utils.set_random_seed(seed)

    def wide(name):
        if variant == "dense":
            return keras.layers.Dense(WIDTH, activation="relu", name=name)
        return DynamicLowRankDense(
            WIDTH, max_rank=max_rank, rank=rank, tol=tol, activation="relu", name=name,
            spectral_weight=beta if variant == "dlrt_spectral" else 0.0,
        )

    first = [] if standardize is None else [keras.layers.Normalization(
        axis=None, mean=float(standardize[0]), variance=float(standardize[1]))]
    return keras.Sequential([
        keras.Input((num_inputs,)),
        *first,
        keras.layers.Dense(WIDTH, activation="relu", name="input_layer_dense"),
        wide("hidden_1"),
        wide("hidden_2"),
        keras.layers.Dense(num_classes, name="logits"),
    ], name=variant)


def _arrays(dataset):
    from keras_lowrank import data

    loader = {"digits": data.load_digits_arrays, "mnist1d": data.load_mnist1d_arrays}[dataset]
    (x, y), (x_test, y_test) = loader("train"), loader("test")
    return (x.reshape(len(x), -1), y), (x_test.reshape(len(x_test), -1), y_test)


def _accuracy(model, x, y, perturbation=None):
    target = model if perturbation is None else PerturbedModel(model, perturbation)
    target.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    return float(target.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)["accuracy"])


def train_variant(dataset, variant, seed, epochs=30, learning_rate=1e-3, dense_model=None):
    """Trains one variant; ``dense_to_dlrt`` compresses ``dense_model`` (the
    trained dense variant of the same seed) and fine-tunes it."""
    (x, y), (x_test, y_test) = _arrays(dataset)
    start = time.time()
    if variant == "dense_to_dlrt":
        if dense_model is None:
            raise ValueError("`dense_model`: the dense_to_dlrt variant needs the trained dense model.")
        keras.utils.set_random_seed(seed)
        model = compression.to_low_rank(dense_model, layers=["hidden_1", "hidden_2"], rank=CONVERTED_RANK,
                                        max_rank=CONVERTED_RANK, tol=CONVERTED_TOL)
        epochs = max(1, epochs // 2)
    else:
        model = mlp(x.shape[1], int(y.max()) + 1, variant, seed=seed,
                    standardize=(x.mean(), x.var()) if dataset in STANDARDIZED else None)
    optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=DLRT(optimizer) if variant != "dense" else optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    record = {"epochs": epochs}
    if variant != "dense":
        summary = compression.compression_summary(model)  # fit ended the DLRT cycle
        low_rank = [row for row in summary.rows if row["rank"] is not None]
        record["ranks"] = [row["rank"] for row in low_rank]
        record["compression_rate"] = summary.total["compression_rate"]
        record["cond"] = [row["cond"] for row in low_rank]
    record["clean"] = _accuracy(model, x_test, y_test)
    for eps in FGSM_EPS[dataset]:
        record[f"fgsm_{eps}"] = _accuracy(model, x_test, y_test, FGSM(eps))
    record["seconds"] = round(time.time() - start, 1)
    return model, record


def run_dlrt_table(datasets=("digits", "mnist1d"), seeds=(0, 1, 2), epochs=30, echo=print):
    """Trains every variant for every seed; returns {dataset: {variant: [records]}}
    and echoes a Markdown table per dataset."""
    results = {}
    for dataset in datasets:
        results[dataset] = {variant: [] for variant in VARIANTS}
        for seed in seeds:
            dense_model = None
            for variant in VARIANTS:
                model, record = train_variant(dataset, variant, seed, epochs, dense_model=dense_model)
                results[dataset][variant].append(record)
                if variant == "dense":
                    dense_model = model
            echo(f"  {dataset} seed {seed}: " + ", ".join(
                f"{v} {results[dataset][v][-1]['clean']:.3f}" for v in VARIANTS))
        echo("")
        echo(format_dlrt_table(dataset, results[dataset], len(seeds)))
    return results


def _mean_std(records, key):
    values = np.array([r[key] for r in records], dtype=float)
    return values.mean(), values.std()


def format_dlrt_table(dataset, by_variant, num_seeds):
    head = ["variant", "clean acc"] + [f"FGSM ε={e}" for e in FGSM_EPS[dataset]] + [
        "ranks (hidden_1, hidden_2)", "compression"]
    lines = [f"DLRT on {dataset} (MLP, two 512×512 layers compressed; mean ± std over "
             f"{num_seeds} seeds)", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, records in by_variant.items():
        cells = [variant]
        for key in ["clean"] + [f"fgsm_{e}" for e in FGSM_EPS[dataset]]:
            mean, std = _mean_std(records, key)
            cells.append(f"{mean:.1%} ± {std:.1%}")
        if "ranks" in records[0]:
            ranks = np.array([r["ranks"] for r in records])
            cells.append(", ".join(f"{m:.1f}" for m in ranks.mean(0)))
            mean, std = _mean_std(records, "compression_rate")
            cells.append(f"{mean:.1%} ± {std:.1%}")
        else:
            cells += ["512 (full)", "0%"]
        lines.append("| " + " | ".join(cells) + " |")
    if "dense_to_dlrt" in by_variant:
        lines.append(f"dense_to_dlrt: each seed's dense model ({by_variant['dense'][0]['epochs']} epochs), "
                     f"SVD rank {CONVERTED_RANK} (max_rank {CONVERTED_RANK}, tol {CONVERTED_TOL}), then "
                     f"{by_variant['dense_to_dlrt'][0]['epochs']} epochs of DLRT.")
    return "\n".join(lines)
