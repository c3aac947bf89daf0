"""Training-step time of a model with the LR layer, against the same model without it
and against the same model with a plain layer of the same size in its place.

Real digits, batch 128, the layer (rank 10, its defaults) on the penultimate
representation of m features. The three models' compiled train steps are timed in
this run on the same in-memory batches (``train_on_batch``: no input pipeline in the
measurement), alternating repeats so that machine load hits them alike; the ratios are
medians over repeats.

- "LR / none" (issue 2's goal: ≤ 1.15×): the LR layer adds three n×m×m products per
  step (Wᵀ(a+b) forward, two in the backward pass), so its cost relative to the network
  is bounded below by the multiply-add ratio printed beside it: for a wide
  representation on a tiny network no implementation can reach 1.15×.
- "LR / plain" (issue 42's goal: ≤ 1.15× at 512 and 1024 features): the plain layer is a
  ``Dense(m)`` (no activation) where the LR layer was, the same three n×m×m products;
  what is left is the LR layer's own work: its loss, its thresholding every 10 steps.

    python benchmarks/lr_layer_overhead.py [--steps 200] [--repeats 5] [--features 512 1024]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import LowRankProjection, data  # noqa: E402
from keras_lowrank._demo.models import small_cnn  # noqa: E402

CONFIGS = (  # (description, filters, feature dim)
    ("demo CNN", (16, 32), 64),
    ("wide CNN", (64, 128), 256),
    ("tiny CNN, wide features", (16, 32), 512),
    ("tiny CNN, wider features", (16, 32), 1024),
)


def forward_macs(model):
    """Multiply-adds of one sample's forward pass through Conv and Dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
            total += int(np.prod(layer.output.shape[1:-1])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, LowRankProjection):
            total += layer.features**2
    return total


def step_time(model, batches, steps):
    start = time.perf_counter()
    for i in range(steps):
        model.train_on_batch(*batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--features", type=int, nargs="*", help="only these feature sizes (default: all)")
    args = parser.parse_args()
    x, y = data.load_digits_arrays("train")
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(x) - 127, 128)]
    print(f"backend {keras.backend.backend()}, digits, batch 128, LR rank {args.rank}, "
          f"{args.steps} steps x {args.repeats} repeats (median)")
    print(f"{'model':<26} {'m':>5} {'none ms':>8} {'plain ms':>9} {'LR ms':>7} "
          f"{'LR / none':>10} {'MAC ratio':>9} {'LR / plain':>11}")
    for description, filters, dim in CONFIGS:
        if args.features and dim not in args.features:
            continue
        models = {}
        for label in ("none", "plain", "lr"):
            keras.utils.set_random_seed(0)
            base = small_cnn(feature_dim=dim, filters=filters)
            middle = {"none": [], "plain": [keras.layers.Dense(dim, name="plain")],
                      "lr": [LowRankProjection(args.rank, name="low_rank")]}[label]
            model = keras.Sequential([keras.Input(base.input_shape[1:]), *base.layers[:-1], *middle,
                                      base.layers[-1]])
            model.compile("adam",
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            step_time(model, batches, 30)  # compile and warm up
            models[label] = model
        times = {label: [] for label in models}
        for _ in range(args.repeats):
            for label, model in models.items():
                times[label].append(step_time(model, batches, args.steps))
        ratios = {label: np.median(np.array(times["lr"]) / np.array(times[label])) for label in ("none", "plain")}
        mac_ratio = forward_macs(models["lr"]) / forward_macs(models["none"])
        print(f"{description:<26} {dim:>5} {np.median(times['none']) * 1e3:>8.2f} "
              f"{np.median(times['plain']) * 1e3:>9.2f} {np.median(times['lr']) * 1e3:>7.2f} "
              f"{ratios['none']:>10.2f} {mac_ratio:>9.2f} {ratios['plain']:>11.2f}")


if __name__ == "__main__":
    main()
