"""AutoAttack throughput on whatever device Keras runs on (run by
``benchmarks/gpu_suite.sh`` with GPU_SUITE_BENCH=1; JAX backend there).

A CIFAR-shaped CNN (32×32×3, ~0.3 M parameters) fitted for a few steps on
synthetic data (the GPU image holds no datasets: the figure is the attack's
speed, not a robustness result), then APGD-CE (100 iterations) and the standard
AutoAttack at L∞ ε = 8/255 on ``--examples`` images in batches of ``--batch``:
seconds for the first call (compilation included) and the second, images/s.

On JAX, each is also run as "one jax.jit per run, no Keras": the same stages and runs
(the stage's own ``_run`` graph: the attack's arithmetic is not re-derived), each traced
by a bare ``jax.jit`` of ``model.stateless_call`` with the weights as arguments, on the
examples still robust (padded to the same power-of-two sizes as ours, so both compile
the same shapes), the inputs already on the device — what the attack costs without our
per-call machinery (label and range checks, the clean forward pass before each stage,
the re-check of each stage's finds, AutoAttack's zero-gradient and randomness checks).
The ratio ours ÷ bare of the second calls is issue 21's GPU figure (goal ≤ 1.3×).

    python benchmarks/autoattack_gpu.py [--examples 1000] [--batch 500] [--queries 5000]
"""

import argparse
import json
import time

import keras
import numpy as np

from keras_lowrank.robustness import APGD, AutoAttack
from keras_lowrank.robustness.attacks._runner import _bucket, _padded


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


def bare_jit(model, stages, x, y, batch):
    """Robust accuracy under ``stages`` (run in turn on what is still robust), each run
    one bare ``jax.jit``; returns a function of no arguments (compiled on first use)."""
    import jax
    import jax.numpy as jnp

    def scores(t, n):
        return lambda xs: model.stateless_call(t, n, xs, training=False)[0]

    predict = jax.jit(lambda t, n, xs: jnp.argmax(scores(t, n)(xs), axis=-1))
    classes = model.output_shape[-1]
    runs = {id(stage): jax.jit(lambda t, n, xs, ys, key, noise, stage=stage:
                               stage._run(scores(t, n), xs, ys, key, noise)) for stage in stages}
    batches = [(x[i:i + batch], y[i:i + batch], jax.device_put(x[i:i + batch]))
               for i in range(0, len(x), batch)]

    def run():
        # the weights' current buffers (Keras' predict may have replaced the earlier ones)
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        robust_count = 0
        for xb, yb, xb_device in batches:
            robust = np.asarray(predict(trainable, non_trainable, xb_device)) == yb
            for stage in stages:
                for key in stage._run_keys(classes):
                    rows = np.flatnonzero(robust)
                    if not len(rows):
                        break
                    padded = _padded(rows, _bucket(len(rows), len(xb)))
                    xs = jax.device_put(xb[padded])
                    _, broken = runs[id(stage)](trainable, non_trainable, xs, jax.device_put(yb[padded]),
                                                np.int32(key), stage._noise(xs))
                    robust[rows[np.asarray(broken)[:len(rows)]]] = False
            robust_count += int(robust.sum())
        return robust_count / len(x)

    return run


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
    bare = keras.backend.backend() == "jax"
    if bare:
        run = bare_jit(model, [APGD(eps, seed=0)], x, y, args.batch)
        for call in ("first", "second"):
            results["apgd_ce_bare_accuracy"], results[f"apgd_ce_bare_{call}_s"] = timed(run)
        results["apgd_ce_ours_over_bare"] = results["apgd_ce_second_s"] / results["apgd_ce_bare_second_s"]
    attack = AutoAttack(eps, square_steps=args.queries, batch_size=args.batch, seed=0)
    for call in ("first", "second"):
        result, seconds = timed(lambda: attack.run(model, x, y))
        results[f"autoattack_{call}_s"] = seconds
    results["autoattack_images_per_s"] = args.examples / results["autoattack_second_s"]
    results["autoattack_accuracy"] = result.robust_accuracy
    results["autoattack_stages"] = result.stage_accuracy
    if bare:
        stages = AutoAttack(eps, square_steps=args.queries, batch_size=args.batch, seed=0).stages
        run = bare_jit(model, stages, x, y, args.batch)
        for call in ("first", "second"):
            results["autoattack_bare_accuracy"], results[f"autoattack_bare_{call}_s"] = timed(run)
        results["autoattack_ours_over_bare"] = results["autoattack_second_s"] / results["autoattack_bare_second_s"]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
