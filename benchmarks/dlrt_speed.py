"""DLRT speed: (1) training-step time of a DLRT MLP over the same dense MLP, and
(2) batch inference time of the exported compressed model over the dense one.

Goals (issue 3): (1) ≤ 0.4× for a 3 × 2048-wide MLP with rank ≤ 128;
(2) ≤ 0.25× at ≥ 90 % compression. Both measured in this run, alternating
repeats (median), compiled steps on in-memory batches (``train_on_batch`` /
``predict_on_batch``: no input pipeline in the measurement). The plain
factorised model (U, S, V trained by Adam, no integrator) is timed alongside to
show what the integrator itself costs.

Inputs are random here on purpose: step time does not depend on the data, and no
2048-dimensional offline dataset exists on this machine.

    python benchmarks/dlrt_speed.py [--width 2048] [--max-rank 128] [--rank 64]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import compression  # noqa: E402
from keras_lowrank.layers import DynamicLowRankDense  # noqa: E402
from keras_lowrank.optimizers import DLRT  # noqa: E402


def mlp(width, depth, classes, hidden):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((width,))]
    layers += [hidden() for _ in range(depth)]
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers)


def timed(fn, steps):
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--max-rank", type=int, default=128)
    parser.add_argument("--rank", type=int, default=64, help="rank of the exported model")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.width)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def low_rank():
        return DynamicLowRankDense(args.width, max_rank=args.max_rank, rank=args.max_rank // 2,
                                   activation="relu")

    dense = mlp(args.width, args.depth, 10, lambda: keras.layers.Dense(args.width, activation="relu"))
    dense.compile(keras.optimizers.Adam(1e-3), loss)
    dlrt = mlp(args.width, args.depth, 10, low_rank)
    dlrt.compile(DLRT(keras.optimizers.Adam(1e-3)), loss)
    plain = mlp(args.width, args.depth, 10, low_rank)
    plain.compile(keras.optimizers.Adam(1e-3), loss)

    # Inference uses separate models: on JAX, interleaving train_on_batch and
    # predict_on_batch on one model hits donated (deleted) buffers.
    dense_infer = mlp(args.width, args.depth, 10, lambda: keras.layers.Dense(args.width, activation="relu"))
    exported = compression.to_low_rank(dense_infer, rank=args.rank, skip_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        compact = compression.export_compressed(exported, tmp, formats="keras")["model"]
    rate = compression.compression_summary(exported).total["compression_rate"]

    train = {name: (lambda m=m: m.train_on_batch(x, y)) for name, m in
             (("dense", dense), ("dlrt", dlrt), ("plain", plain))}
    infer = {name: (lambda m=m: m.predict_on_batch(x)) for name, m in
             (("dense", dense_infer), ("compressed", compact))}
    for fn in list(train.values()) + list(infer.values()):  # compile + warm up
        for _ in range(3):
            fn()
    times = {name: [] for name in list(train) + ["dense_infer", "compressed"]}
    for _ in range(args.repeats):
        for name, fn in train.items():
            times[name].append(timed(fn, args.steps))
        times["dense_infer"].append(timed(infer["dense"], args.steps * 5))
        times["compressed"].append(timed(infer["compressed"], args.steps * 5))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"backend={keras.backend.backend()} width={args.width} depth={args.depth} "
          f"batch={args.batch} max_rank={args.max_rank}")
    print(f"train step: dense {med['dense'] * 1e3:.1f} ms, DLRT {med['dlrt'] * 1e3:.1f} ms, "
          f"plain factorised {med['plain'] * 1e3:.1f} ms")
    print(f"  DLRT / dense = {med['dlrt'] / med['dense']:.3f}   (goal ≤ 0.4)")
    print(f"  plain factorised / dense = {med['plain'] / med['dense']:.3f}")
    print(f"inference (batch {args.batch}): dense {med['dense_infer'] * 1e3:.2f} ms, "
          f"exported rank {args.rank} ({rate:.1%} compression of the hidden layers) "
          f"{med['compressed'] * 1e3:.2f} ms")
    print(f"  exported / dense = {med['compressed'] / med['dense_infer']:.3f}   (goal ≤ 0.25)")


if __name__ == "__main__":
    main()
