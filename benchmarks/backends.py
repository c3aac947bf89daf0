"""The same work on Keras' three backends, in one run: TensorFlow, JAX and torch (issue 43).

One digits CNN (Conv 16–Conv 32 stride 2–Dense 64–Dense 10) is trained once (on the
first backend) and saved; each backend then loads that file in a fresh Python and times,
on the same weights and examples:

- APGD-CE (100 iterations, L∞ ε = 0.1) on ``--examples`` test digits: the first call
  (tracing/compilation included) and the second (the steady figure); robust accuracy.
- One DLRT epoch: ``to_low_rank(model, rank=8)``, ``DLRT(Adam(1e-3))``, batch 32 over the
  1347 training digits: the first epoch (tracing included) and the second.

Prints one Markdown table; each backend's numbers come from its own child process, all
in the same run on the same machine.

    python benchmarks/backends.py [--examples 200] [--backends tensorflow jax torch]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(backend, path, examples):
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    from keras_lowrank import DLRT, compression, data
    from keras_lowrank.robustness import APGD

    x_train, y_train = (np.asarray(a) for a in data.load_digits_arrays("train"))
    x_test, y_test = (np.asarray(a) for a in data.load_digits_arrays("test"))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if not os.path.exists(path):  # the first backend trains the model every backend uses
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"), keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
        model.compile("adam", loss)
        model.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
        model.save(path)
    model = keras.saving.load_model(path)
    x, y = x_test[:examples], y_test[:examples]
    out = {"backend": backend}
    attack = APGD(0.1, steps=100, seed=0)
    for label in ("apgd_first", "apgd_second"):
        start = time.perf_counter()
        adversarial = keras.ops.convert_to_numpy(attack(model, x, y))
        out[label] = time.perf_counter() - start
    predicted = np.argmax(keras.ops.convert_to_numpy(model.predict(adversarial, verbose=0)), -1)
    out["apgd_robust"] = float(np.mean(predicted == y))
    keras.utils.set_random_seed(0)
    low = compression.to_low_rank(model, rank=8)
    low.compile(DLRT(keras.optimizers.Adam(1e-3)), loss)
    for label in ("dlrt_first", "dlrt_second"):
        start = time.perf_counter()
        low.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0, shuffle=False)
        out[label] = time.perf_counter() - start
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"],
                        choices=["tensorflow", "jax", "torch"])
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.examples)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cnn.keras")
        for backend in args.backends:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            done = subprocess.run([sys.executable, __file__, "--child", backend, path, "--examples",
                                   str(args.examples)], capture_output=True, text=True, env=env, timeout=1800)
            if done.returncode != 0:
                raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.examples} test digits; seconds (first call, tracing included / second call)")
    print("| backend | APGD-CE 100 it., first | APGD-CE, second | robust accuracy | DLRT epoch, first "
          "| DLRT epoch, second |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['apgd_first']:.2f} | {r['apgd_second']:.2f} | {r['apgd_robust']:.3f} | "
              f"{r['dlrt_first']:.2f} | {r['dlrt_second']:.2f} |")


if __name__ == "__main__":
    main()
