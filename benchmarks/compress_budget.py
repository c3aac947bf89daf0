"""Compression to a parameter budget: plain vs data-aware SVD, without and with DLRT
fine-tuning, on real offline data (issue 38's table, float32 part).

Two models, each trained from scratch per seed: a 64–256–256–10 MLP on scikit-learn's
digits (20 epochs) and a Conv1D network on MNIST-1D (20 epochs). Each is converted by
``to_low_rank(budget=β)`` for β in 50 / 25 / 10 % of its converted kernels' parameters,
with the plain SVD of the kernels or the data-aware one (``data=`` 256 training
examples), then scored on the test split as converted and after ``--finetune-epochs``
of DLRT (Adam 1e-3). Prints one Markdown table: mean ± std over the seeds of the test
accuracy, and the exported parameters.

    python benchmarks/compress_budget.py [--seeds 0 1 2] [--finetune-epochs 5]
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import DLRT, compression, data  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def arrays(name):
    load = {"digits": data.load_digits_arrays, "mnist1d": data.load_mnist1d_arrays}[name]
    return [tuple(np.asarray(a) for a in load(split)) for split in ("train", "test")]


def digits_mlp(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                             keras.layers.Dense(256, activation="relu"), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(10)])


def mnist1d_cnn(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Conv1D(32, 5, activation="relu"),
                             keras.layers.Conv1D(64, 5, strides=2, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])


MODELS = {"digits MLP": ("digits", digits_mlp), "MNIST-1D CNN": ("mnist1d", mnist1d_cnn)}


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=1) == y))


def run(name, seeds, budgets, finetune_epochs):
    dataset, build = MODELS[name]
    (x, y), (x_test, y_test) = arrays(dataset)
    results = {}
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        dense = build(x.shape[1:])
        dense.compile("adam", LOSS)
        dense.fit(x, y, epochs=20, batch_size=32, verbose=0)
        results.setdefault((None, None, None), []).append((accuracy(dense, x_test, y_test), dense.count_params()))
        for budget in budgets:
            for method in ("plain", "data-aware"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # DLRT's max_rank note: no room above the budget on purpose
                    low = compression.to_low_rank(dense, budget=budget,
                                                  data=x[:256] if method == "data-aware" else None)
                    size = compression.compression_summary(low).total["model_exported_params"]
                    results.setdefault((budget, method, "no"), []).append((accuracy(low, x_test, y_test), size))
                    low.compile(DLRT(keras.optimizers.Adam(1e-3)), LOSS)
                    low.fit(x, y, epochs=finetune_epochs, batch_size=32, verbose=0)
                    compression.truncate_ranks(low)
                size = compression.compression_summary(low).total["model_exported_params"]
                results.setdefault((budget, method, "DLRT"), []).append((accuracy(low, x_test, y_test), size))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"backend {keras.backend.backend()}, seeds {args.seeds}, DLRT fine-tuning {args.finetune_epochs} epochs")
    print("| model | budget | factorisation | fine-tuning | test accuracy | exported params |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for (budget, method, tuned), values in run(name, args.seeds, args.budgets, args.finetune_epochs).items():
            acc = np.array([v[0] for v in values])
            params = int(np.mean([v[1] for v in values]))
            label = "dense" if budget is None else f"{budget:.0%}"
            print(f"| {name} | {label} | {method or '—'} | {tuned or '—'} | "
                  f"{acc.mean():.4f} ± {acc.std():.4f} | {params:,} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
