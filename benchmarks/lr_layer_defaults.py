"""Does ``LowRankProjection(rank)`` reach its target with its defaults? (issue 18)

Four model/data pairs, each trained with and without the layer over several seeds:

- ``digits_mlp``: Dense(64, ReLU) "features" on real 8×8 digits;
- ``digits_cnn``: the demo's small CNN (Conv16–Conv32–Dense64 "features") on digits;
- ``mnist1d_cnn``: the same CNN on MNIST-1D (standardised inside the model);
- ``wide_cnn``: Conv32–Conv64–Conv64–Dense128 "features" on digits upsampled to
  32×32×3 (real data at CIFAR's shape).

For each pair it prints, per seed, the 99 % variance rank of the layer's input (the
"features" output, centred, over the test split) and the test accuracy of both
networks, then the issue's criteria: rank ≤ target + 2 in every seed, mean accuracy
≥ baseline − 1 point, no seed more than 3 points below its baseline.

    python benchmarks/lr_layer_defaults.py                       # defaults, all pairs, 5 seeds
    python benchmarks/lr_layer_defaults.py --pairs digits_mlp --seeds 0 1
    python benchmarks/lr_layer_defaults.py --lr-kwargs '{"projection_weight": 4}'

Real data only (scikit-learn digits, MNIST-1D); nothing here is synthetic.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import LowRankProjection, analysis, data  # noqa: E402
from keras_lowrank._demo.models import small_cnn  # noqa: E402

PAIRS = {
    # name: (dataset, rank, epochs, batch size)
    "digits_mlp": ("digits", 10, 40, 32),
    "digits_cnn": ("digits", 10, 40, 32),
    "mnist1d_cnn": ("mnist1d", 10, 40, 32),
    "wide_cnn": ("digits_32", 16, 20, 32),
}


def arrays(dataset, split):
    if dataset == "digits_32":
        x, y = data.load_digits_arrays(split)
        x = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)  # 8×8 → 32×32, nearest
        return np.repeat(x, 3, axis=-1), y
    loader = data.load_digits_arrays if dataset == "digits" else data.load_mnist1d_arrays
    return loader(split)


def build(pair, input_shape, rank, lr_kwargs, seed, x_train):
    lr = None if rank is None else LowRankProjection(rank, name="low_rank", **lr_kwargs)
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    if pair == "digits_mlp":
        layers = [keras.Input(input_shape), keras.layers.Flatten(),
                  keras.layers.Dense(64, activation="relu", name="features", kernel_initializer=init(0))]
    elif pair == "wide_cnn":
        layers = [keras.Input(input_shape)]
        for k, (filters, stride) in enumerate(((32, 1), (64, 2), (64, 2))):
            layers.append(keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu",
                                              kernel_initializer=init(k)))
        layers += [keras.layers.Flatten(),
                   keras.layers.Dense(128, activation="relu", name="features", kernel_initializer=init(3))]
    else:
        standardize = (float(x_train.mean()), float(x_train.var())) if pair == "mnist1d_cnn" else None
        return small_cnn(input_shape, 10, lr_rank=rank, lr_kwargs=lr_kwargs, seed=seed, standardize=standardize)
    if lr is not None:
        layers.append(lr)
    layers.append(keras.layers.Dense(10, name="logits", kernel_initializer=init(9)))
    return keras.Sequential(layers)


def run(pair, seed, rank, lr_kwargs, epochs_scale):
    dataset, target, epochs, batch = PAIRS[pair]
    x, y = arrays(dataset, "train")
    x_test, y_test = arrays(dataset, "test")
    keras.utils.set_random_seed(seed)
    model = build(pair, x.shape[1:], None if rank is None else target, lr_kwargs, seed, x)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=batch, epochs=max(1, round(epochs * epochs_scale)), verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    ranks = analysis.representation_ranks(model, x_test, layers=["features"])["features"]
    return {"accuracy": float(accuracy), "variance_rank_99": int(ranks.variance_rank), "target": target}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr-kwargs", type=json.loads, default={},
                        help="LowRankProjection arguments besides rank, as JSON (default: none)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every pair's epochs")
    parser.add_argument("--json", help="also write the per-seed records here")
    args = parser.parse_args(argv)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, LR arguments {args.lr_kwargs or 'defaults'}")
    records = {}
    for pair in args.pairs:
        rows = []
        for seed in args.seeds:
            start = time.time()
            base = run(pair, seed, None, {}, args.epochs_scale)
            low = run(pair, seed, "target", args.lr_kwargs, args.epochs_scale)
            rows.append({"seed": seed, "baseline": base, "lr": low, "seconds": round(time.time() - start, 1)})
            print(f"  {pair} seed {seed}: baseline acc {base['accuracy']:.4f} rank {base['variance_rank_99']}; "
                  f"LR acc {low['accuracy']:.4f} rank {low['variance_rank_99']} (target {low['target']})",
                  flush=True)
        records[pair] = rows
    print("\n| pair | target r | var. rank 99 % baseline (per seed) | with LR (per seed) | acc. baseline "
          "| acc. LR | worst seed Δ | rank ≤ r + 2 | mean Δ ≥ −1 | no seed < −3 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair, rows in records.items():
        target = rows[0]["lr"]["target"]
        base_acc = np.array([r["baseline"]["accuracy"] for r in rows])
        lr_acc = np.array([r["lr"]["accuracy"] for r in rows])
        lr_ranks = [r["lr"]["variance_rank_99"] for r in rows]
        delta = 100 * (lr_acc - base_acc)
        print(f"| {pair} | {target} | {[r['baseline']['variance_rank_99'] for r in rows]} | {lr_ranks} "
              f"| {base_acc.mean():.4f} ± {base_acc.std():.4f} | {lr_acc.mean():.4f} ± {lr_acc.std():.4f} "
              f"| {delta.min():+.1f} | {'yes' if max(lr_ranks) <= target + 2 else 'NO'} "
              f"| {'yes' if delta.mean() >= -1 else 'NO'} | {'yes' if delta.min() >= -3 else 'NO'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lr_kwargs": args.lr_kwargs, "records": records}, f, indent=2)


if __name__ == "__main__":
    main()
