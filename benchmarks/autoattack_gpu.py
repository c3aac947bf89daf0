"""AutoAttack throughput on whatever device Keras runs on (run by
``benchmarks/gpu_suite.sh`` with GPU_SUITE_BENCH=1; JAX backend there).

A CIFAR-shaped CNN (32×32×3, ~0.3 M parameters) fitted for a few steps on
synthetic data (the GPU image holds no datasets: the figure is the attack's
speed, not a robustness result), then APGD-CE (100 iterations) and the standard
AutoAttack at L∞ ε = 8/255 on ``--examples`` images in batches of ``--batch``:
seconds for the first call (compilation included) and the second, images/s.

    python benchmarks/autoattack_gpu.py [--examples 1000] [--batch 500] [--queries 5000]
"""

import argparse
import json
import time

import keras
import numpy as np

from keras_lowrank.robustness import APGD, AutoAttack


def model_and_data(examples, seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    # class-dependent colour shifts: learnable in a few steps, so points are not all misclassified
    y = rng.integers(0, 10, examples)
    x = np.clip(rng.uniform(0.2, 0.8, (examples, 32, 32, 3)) + 0.15 * np.eye(10, 3)[y][:, None, None, :],
                0, 1).astype("float32")
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=128, verbose=0)
    return model, x, y


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--queries", type=int, default=5000)
    args = parser.parse_args()
    model, x, y = model_and_data(args.examples)
    eps = 8 / 255
    results = {"backend": keras.backend.backend(), "examples": args.examples,
               "clean_accuracy": float(np.mean(model.predict(x, verbose=0).argmax(1) == y))}
    apgd = APGD(eps, seed=0)

    def run_apgd():
        return np.concatenate([apgd(model, x[i:i + args.batch], y[i:i + args.batch])
                               for i in range(0, len(x), args.batch)])

    for call in ("first", "second"):
        adversarial, seconds = timed(run_apgd)
        results[f"apgd_ce_{call}_s"] = seconds
    results["apgd_ce_images_per_s"] = args.examples / results["apgd_ce_second_s"]
    results["apgd_ce_accuracy"] = float(np.mean(model.predict(adversarial, verbose=0).argmax(1) == y))
    attack = AutoAttack(eps, n_queries=args.queries, batch_size=args.batch, seed=0)
    for call in ("first", "second"):
        result, seconds = timed(lambda: attack.run(model, x, y))
        results[f"autoattack_{call}_s"] = seconds
    results["autoattack_images_per_s"] = args.examples / results["autoattack_second_s"]
    results["autoattack_accuracy"] = result.robust_accuracy
    results["autoattack_stages"] = result.stage_accuracy
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
