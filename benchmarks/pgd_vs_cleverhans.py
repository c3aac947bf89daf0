"""PGD-10 robust accuracy over the digits test set: ours vs cleverhans 4.

Ours: ``PerturbedModel(model, PGD(...)).evaluate`` — the attack runs inside
Keras' compiled test step. Cleverhans: ``projected_gradient_descent`` called
batch by batch (its documented use; a Python loop per step around its compiled
gradient). Both without random start, so their accuracies must be equal.
Goal (issue 4): ≥ 3× faster on CPU for the demo CNN, faster for a CNN ≥ 10× larger.

Inputs: each side gets its fastest route to the same test images. Ours reads the
library's own pipeline, ``data.load("digits", "test")`` (a batched tf.data
Dataset, what ``evaluate_robustness`` takes), and, for comparison, numpy arrays
(on TensorFlow Keras then builds a tf.data pipeline inside every ``evaluate``:
≈ 90 ms per call here, more than the attack on this test set). Cleverhans gets
numpy slices (fed from the same Dataset it was ≈ 1.5× slower here).

Cleverhans' tf2 attacks need the TensorFlow backend. Ours is timed on it (plain,
XLA) and, on the same saved weights, on the JAX backend, in a child process this
script starts (a process has one Keras backend); each also with
``steps_per_execution=4`` (Keras runs the 4 batches of the test set in one
compiled call — possible because the attack lives inside the test step).
Timings exclude compilation (one warm-up ``evaluate`` each); medians of repeats.

    python benchmarks/pgd_vs_cleverhans.py [--repeats 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
JAX_WORKER = "--jax-worker" in sys.argv
os.environ["KERAS_BACKEND"] = "jax" if JAX_WORKER else "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank._demo.models import small_cnn  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

EPS, STEP, STEPS, BATCH = 0.1, 0.025, 10, 128
CONFIGS = (("demo CNN", (16, 32), 64), ("large CNN", (64, 128), 512))
# (label, jit_compile, steps_per_execution, input) for ours on each backend
TF_VARIANTS = (("TF, tf.data", False, 1, "dataset"), ("TF, arrays", False, 1, "arrays"),
               ("TF + XLA, tf.data", True, 1, "dataset"),
               ("TF + XLA, 4 steps/call, tf.data", True, 4, "dataset"))
JAX_VARIANTS = (("JAX, tf.data", None, 1, "dataset"), ("JAX, arrays", None, 1, "arrays"),
                ("JAX, 4 steps/call, arrays", None, 4, "arrays"))


def ours(model, jit_compile, steps_per_execution, inputs):
    wrapper = PerturbedModel(model, PGD(EPS, step_size=STEP, steps=STEPS, random_start=False))
    wrapper.compile(metrics=["accuracy"], jit_compile=jit_compile, steps_per_execution=steps_per_execution,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if inputs == "dataset":
        args, kwargs = (data.load("digits", "test", batch_size=BATCH)[0],), {}
    else:
        args, kwargs = data.load_digits_arrays("test"), {"batch_size": BATCH}
    wrapper.evaluate(*args, **kwargs, verbose=0)  # trace both batch shapes
    start = time.perf_counter()
    accuracy = wrapper.evaluate(*args, **kwargs, verbose=0, return_dict=True)["accuracy"]
    return time.perf_counter() - start, accuracy


def cleverhans(model, x, y):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    correct = 0
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        adv = projected_gradient_descent(model, x[i:i + BATCH], EPS, STEP, STEPS, np.inf,
                                         clip_min=0.0, clip_max=1.0, y=y[i:i + BATCH],
                                         rand_init=False, sanity_checks=False)
        correct += int(np.sum(np.argmax(model(adv, training=False), -1) == y[i:i + BATCH]))
    return time.perf_counter() - start, correct / len(x)


def timings(runs):
    """{label: (median seconds, accuracy of the first run)} from [{label: (s, acc)}]."""
    return {label: (float(np.median([r[label][0] for r in runs])), runs[0][label][1]) for label in runs[0]}


def jax_worker(path, repeats):
    import keras_lowrank  # noqa: F401  (registers the custom objects)

    model = keras.saving.load_model(path)
    runs = [{label: ours(model, *variant) for label, *variant in JAX_VARIANTS}
            for _ in range(repeats)]
    print(json.dumps(timings(runs)))


def ours_on_jax(model, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        out = subprocess.run([sys.executable, __file__, "--jax-worker", path, "--repeats", str(repeats)],
                             check=True, capture_output=True, text=True).stdout
    return {label: tuple(value) for label, value in json.loads(out.strip().splitlines()[-1]).items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jax-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jax_worker:
        return jax_worker(args.jax_worker, args.repeats)
    x, y = data.load_digits_arrays("train")
    x_test, y_test = data.load_digits_arrays("test")
    print(f"digits test set ({len(x_test)} images), PGD-{STEPS} L∞ eps={EPS}, batch {BATCH}, "
          f"CPU, median of {args.repeats}")
    print(f"{'model':<10} {'params':>9}  {'ours':<32} {'ours s':>7} {'cleverhans s':>12} "
          f"{'speed-up':>8} {'acc ours':>8} {'acc ch':>7}")
    for name, filters, dim in CONFIGS:
        keras.utils.set_random_seed(0)
        model = small_cnn(feature_dim=dim, filters=filters)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=5, batch_size=64, verbose=0)
        runs = []  # alternating: every variant of ours, then cleverhans, per repeat
        for _ in range(args.repeats):
            run = {label: ours(model, *variant) for label, *variant in TF_VARIANTS}
            run["cleverhans"] = cleverhans(model, x_test, y_test)
            runs.append(run)
        results = timings(runs)
        results.update(ours_on_jax(model, args.repeats))
        t_ch, acc_ch = results.pop("cleverhans")
        for label, (seconds, accuracy) in results.items():
            print(f"{name:<10} {model.count_params():>9,}  {label:<32} {seconds:>7.3f} {t_ch:>12.3f} "
                  f"{t_ch / seconds:>7.1f}× {accuracy:>8.4f} {acc_ch:>7.4f}")


if __name__ == "__main__":
    main()
