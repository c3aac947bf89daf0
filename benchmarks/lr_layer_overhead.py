"""Training-step time of a model with the LR layer over the same model without it.

Goal (issue 2): ≤ 1.15×. Real digits, batch 128, the layer (rank 10) on the
penultimate representation of m features. Both models' compiled train steps are
timed in this run on the same in-memory batches (``train_on_batch``: no input
pipeline in the measurement), alternating repeats so that machine load hits both
alike; the ratio is the median over repeats.

The LR layer adds three n×m×m products per step (Wᵀ(a+b) forward, two in the
backward pass), so its cost relative to the network is bounded below by the
multiply-add ratio printed beside the measured one: for a wide representation
on a tiny network no implementation can reach 1.15×.

    python benchmarks/lr_layer_overhead.py [--steps 200] [--repeats 5]
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
    args = parser.parse_args()
    x, y = data.load_digits_arrays("train")
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, len(x) - 127, 128)]
    print(f"backend {keras.backend.backend()}, digits, batch 128, LR rank {args.rank}, "
          f"{args.steps} steps x {args.repeats} repeats (median)")
    print(f"{'model':<24} {'m':>4} {'plain ms':>9} {'LR ms':>7} {'ratio':>6} "
          f"{'MAC ratio':>9}  goal ≤ 1.15")
    for description, filters, dim in CONFIGS:
        models = {}
        for label, rank in (("plain", None), ("lr", args.rank)):
            keras.utils.set_random_seed(0)
            model = small_cnn(feature_dim=dim, filters=filters, lr_rank=rank)
            model.compile("adam",
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            step_time(model, batches, 30)  # compile and warm up
            models[label] = model
        times = {"plain": [], "lr": []}
        for _ in range(args.repeats):
            for label, model in models.items():
                times[label].append(step_time(model, batches, args.steps))
        ratio = np.median(np.array(times["lr"]) / np.array(times["plain"]))
        mac_ratio = forward_macs(models["lr"]) / forward_macs(models["plain"])
        print(f"{description:<24} {dim:>4} {np.median(times['plain']) * 1e3:>9.2f} "
              f"{np.median(times['lr']) * 1e3:>7.2f} {ratio:>6.2f} {mac_ratio:>9.2f}  "
              f"{'met' if ratio <= 1.15 else 'missed'}")


if __name__ == "__main__":
    main()
