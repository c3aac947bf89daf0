"""DLRT's first ``fit`` call on a keras.applications model against Adam's (issue 21, item 2).

Three configurations, each in a fresh Python (TensorFlow backend unless KERAS_BACKEND
says otherwise), on a batch of 16 random 32×32×3 images (weights=None, 10 classes):

- ``dense-adam``: the dense model trained with Adam (what a user runs without us);
- ``adam``: the model after ``to_low_rank(rank=8)`` trained with plain Adam on its
  factors (the same variables as DLRT, without the integrator);
- ``dlrt``: the same low-rank model trained with ``DLRT(Adam)``.

For each: the first ``fit`` call (one step: tracing, optimizer slots, graph
optimisation), the mean step over one whole DLRT cycle (10 steps: augment, Galerkin
steps, truncate) after the first cycle has run once (so no first execution of a branch
is in it), the process's peak resident memory (the model alone, after ``predict``, in
``before_mib``), and ``phase_ms``: medians over three more cycles of the cycle's first step
(DLRT's augment), its eight middle steps (Galerkin steps) and its last (truncate), each
step timed to the end of its logs (a callback of the user's makes ``fit`` wait for them).
Goal: DLRT's first call ≤ 1.5× Adam's in time and memory at 100+ low-rank layers, step time
unchanged.

    python benchmarks/dlrt_first_step.py [--models MobileNetV2 DenseNet121] [--integrator host graph vmap]

``--integrator``: DLRT also with its augment / truncate forced where they run on JAX
(``host``: one NumPy host callback, the CPU's default beyond 16 low-rank layers;
``graph``: each layer's own ops in the compiled step, the CPU's default up to 16; ``vmap``:
alike layers batched in the compiled step, a GPU's default), as ``dlrt-host`` /
``dlrt-graph`` / ``dlrt-vmap`` — the GPU
suite asks whether the host callback pays on a GPU too. (On a 2-core CPU ``vmap`` did
not finish MobileNetV2's first call in 300 s — the thread-pool deadlock
``_low_rank.host_integrator`` describes; a configuration over ``--child-timeout``
seconds is reported as hung.)
"""

import argparse
import os
import subprocess
import sys

CHILD = r"""
import os, time, sys, resource, json, warnings
import numpy as np, keras
from keras_lowrank import DLRT, compression
name, which = sys.argv[1], sys.argv[2]
if which.startswith("dlrt-"):  # the integrator forced to run where the name says
    from keras_lowrank import optimizers
    where = which[len("dlrt-"):]
    optimizers._integrator_mode = lambda _layer_count: None if where == "graph" else where
kw = {"alpha": 0.35} if name == "MobileNetV2" else {}
model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10,
                                          classifier_activation=None, **kw)
warnings.simplefilter("ignore")
if which != "dense-adam":
    model = compression.to_low_rank(model, rank=8)
x = np.random.default_rng(0).uniform(size=(16, 32, 32, 3)).astype("float32")
y = np.arange(16) % 10
opt = DLRT(keras.optimizers.Adam(1e-3)) if which.startswith("dlrt") else keras.optimizers.Adam(1e-3)
model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.predict(x, verbose=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); model.fit(x, y, epochs=1, batch_size=16, verbose=0); first = time.perf_counter() - t
cycle_x, cycle_y = np.concatenate([x] * 10), np.concatenate([y] * 10)
model.fit(cycle_x[:-16], cycle_y[:-16], epochs=1, batch_size=16, verbose=0, shuffle=False)  # the first cycle's rest
t = time.perf_counter(); model.fit(cycle_x, cycle_y, epochs=1, batch_size=16, verbose=0, shuffle=False)
step = (time.perf_counter() - t) / 10
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # read where it was read before the phases were added
class Stamps(keras.callbacks.Callback):  # a callback of the user's: Keras waits for each step's logs
    def on_train_batch_begin(self, batch, logs=None): self.start = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None): seconds.append(time.perf_counter() - self.start)
seconds = []
for _ in range(3):
    model.fit(cycle_x, cycle_y, epochs=1, batch_size=16, verbose=0, shuffle=False, callbacks=[Stamps()])
phases = np.array(seconds).reshape(3, 10) * 1e3
print(json.dumps({"model": name, "which": which, "first_fit_s": round(first, 1), "step_s": round(step, 3),
                  "peak_mib": round(peak / 1024),
                  "before_mib": round(before / 1024),
                  "phase_ms": {"first": round(float(np.median(phases[:, 0]))),
                               "middle": round(float(np.median(phases[:, 1:9]))),
                               "last": round(float(np.median(phases[:, 9])))}}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "DenseNet121"])
    parser.add_argument("--integrator", nargs="*", default=[], choices=["host", "graph", "vmap"],
                        help="also DLRT with its integrator forced to run there (JAX only)")
    parser.add_argument("--child-timeout", type=float, default=600, help="seconds per configuration")
    args = parser.parse_args(argv)
    if args.integrator and os.environ.get("KERAS_BACKEND") != "jax":
        parser.error("--integrator applies to the JAX backend (KERAS_BACKEND=jax)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.setdefault("KERAS_BACKEND", "tensorflow")
    for model in args.models:
        for which in ("dense-adam", "adam", "dlrt", *(f"dlrt-{where}" for where in args.integrator)):
            try:
                done = subprocess.run([sys.executable, "-c", CHILD, model, which], capture_output=True, text=True,
                                      env=env, check=True, timeout=args.child_timeout)
            except subprocess.TimeoutExpired:  # e.g. vmap on a CPU of few cores (see _low_rank/host_integrator.py)
                print(f'{{"model": "{model}", "which": "{which}", "hung": "over {args.child_timeout} s"}}', flush=True)
                continue
            print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
