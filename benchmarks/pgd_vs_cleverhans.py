"""PGD-10 robust accuracy over the digits test set: ours vs cleverhans 4.

Ours: ``PerturbedModel(model, PGD(...)).evaluate`` — the attack runs inside
Keras' compiled test step. Cleverhans: ``projected_gradient_descent`` called
batch by batch (its documented use; it runs eagerly, a Python loop per step).
Both without random start, so their accuracies must be equal. Goal (issue 4):
≥ 3× faster on CPU for the demo CNN, faster for a CNN ≥ 10× larger.
TensorFlow backend only (cleverhans' tf2 attacks).

    python benchmarks/pgd_vs_cleverhans.py [--repeats 3]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from cleverhans.tf2.attacks.projected_gradient_descent import (  # noqa: E402
    projected_gradient_descent,
)

from keras_lowrank import data  # noqa: E402
from keras_lowrank.models import small_cnn  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

EPS, STEP, STEPS, BATCH = 0.1, 0.025, 10, 128
CONFIGS = (("demo CNN", (16, 32), 64), ("large CNN", (64, 128), 512))


def ours(model, x, y, jit_compile):
    wrapper = PerturbedModel(model, PGD(EPS, step_size=STEP, steps=STEPS, random_start=False))
    wrapper.compile(metrics=["accuracy"], jit_compile=jit_compile,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapper.evaluate(x, y, batch_size=BATCH, verbose=0)  # trace both batch shapes
    start = time.perf_counter()
    accuracy = wrapper.evaluate(x, y, batch_size=BATCH, verbose=0, return_dict=True)["accuracy"]
    return time.perf_counter() - start, accuracy


def cleverhans(model, x, y):
    correct = 0
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        adv = projected_gradient_descent(model, x[i:i + BATCH], EPS, STEP, STEPS, np.inf,
                                         clip_min=0.0, clip_max=1.0, y=y[i:i + BATCH],
                                         rand_init=False, sanity_checks=False)
        correct += int(np.sum(np.argmax(model(adv, training=False), -1) == y[i:i + BATCH]))
    return time.perf_counter() - start, correct / len(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = data.load_digits_arrays("train")
    x_test, y_test = data.load_digits_arrays("test")
    print(f"digits test set ({len(x_test)} images), PGD-{STEPS} L∞ eps={EPS}, batch {BATCH}, "
          f"TensorFlow CPU, median of {args.repeats}")
    print(f"{'model':<10} {'params':>9} {'ours s':>7} {'ours XLA s':>10} {'cleverhans s':>12} "
          f"{'speed-up':>8} {'XLA speed-up':>12} {'acc ours':>8} {'acc XLA':>7} {'acc ch':>7}")
    for label, filters, dim in CONFIGS:
        keras.utils.set_random_seed(0)
        model = small_cnn(feature_dim=dim, filters=filters)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
        runs = [(ours(model, x_test, y_test, False), ours(model, x_test, y_test, True),
                 cleverhans(model, x_test, y_test)) for _ in range(args.repeats)]
        t_ours, t_xla, t_ch = (np.median([r[i][0] for r in runs]) for i in range(3))
        acc_ours, acc_xla, acc_ch = (runs[0][i][1] for i in range(3))
        print(f"{label:<10} {model.count_params():>9,} {t_ours:>7.2f} {t_xla:>10.2f} "
              f"{t_ch:>12.2f} {t_ch / t_ours:>7.1f}× {t_ch / t_xla:>11.1f}× "
              f"{acc_ours:>8.4f} {acc_xla:>7.4f} {acc_ch:>7.4f}")


if __name__ == "__main__":
    main()
