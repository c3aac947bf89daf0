"""DLRT's first ``fit`` call and step on a stack of N alike low-rank Dense layers,
against plain Adam on the same model (issue 21, item 2: the integrator's cost per layer).

N ``DynamicLowRankDense(64, rank=8, max_rank=16)`` layers on 64 features, then
``Dense(10)``; ``steps_per_cycle=3`` (every later step is an augmentation, a Galerkin
step or a truncation, equally often). Prints the first ``fit`` call (one step with
tracing) on 64 examples, the mean of six later steps (batch 64, no retracing) and the
peak resident memory, one line per optimizer; each optimizer in a fresh Python.
Alike layers are the best case for the integrator's batching by shape; models with
layers of many shapes gain less (``dlrt_first_step.py``).

    python benchmarks/dlrt_many_layers.py [--layers 100]
    KERAS_BACKEND=jax python benchmarks/dlrt_many_layers.py --layers 30
"""

import argparse
import subprocess
import sys

CHILD = r"""
import resource, sys, time
import keras, numpy as np
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.optimizers import DLRT
which, n = sys.argv[1], int(sys.argv[2])
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,))]
                         + [DynamicLowRankDense(64, max_rank=16, rank=8, activation="relu")
                            for _ in range(n)] + [keras.layers.Dense(10)])
adam = keras.optimizers.Adam(1e-3)
model.compile(optimizer=DLRT(adam, steps_per_cycle=3) if which == "dlrt" else adam,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(192, 64)).astype("float32")
y = np.arange(192) % 10
start = time.time()
model.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
first = time.time() - start
start = time.time()
model.fit(x, y, batch_size=64, epochs=2, verbose=0)
step = (time.time() - start) / 6
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{keras.backend.backend()} {which} layers={n} first={first:.1f}s "
      f"step={step * 1000:.1f}ms peak={peak:.0f}MiB")
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=100)
    args = parser.parse_args(argv)
    for which in ("adam", "dlrt"):
        done = subprocess.run([sys.executable, "-c", CHILD, which, str(args.layers)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
