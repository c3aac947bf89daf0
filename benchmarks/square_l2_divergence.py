"""Where Square L2's graph version and the port of the authors' loop part (issue 21, item 7).

`tests/test_autoattack.py::test_square_l2_equals_the_authors_loop` passes on the CPU (the
two agree to 3e-7) and failed on an H100 (largest difference 0.62) with full float32
products and identical model scores. This script runs the test's setting with the first k
iterations only (the same random draws and window schedule as the full 80-query run),
finds by bisection the first k after which the two differ, and prints, for the examples
that differ, both sides' margins before and after that iteration and how far apart their
points were before it: near-equal margins (≈ 1e-7) with agreeing points mean a decision
flipped on rounding; far-apart margins or points mean the graph computes something else.

    python benchmarks/square_l2_divergence.py          # CPU: "no divergence"
    KERAS_BACKEND=jax python benchmarks/square_l2_divergence.py   # the GPU suite runs this
"""

import os
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_autoattack import reference_square_l2  # noqa: E402  (the authors' loop, ported)

from keras_lowrank import float32_matmuls  # noqa: E402
from keras_lowrank.robustness import Square  # noqa: E402
from keras_lowrank.robustness._classifier import ClassifierView  # noqa: E402
from keras_lowrank.robustness._gradients import compile_function  # noqa: E402

N, EPS = 80, 1.5


def main():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 10, 2)), keras.layers.Conv2D(4, 3, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 10, 10, 2)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    full = Square(EPS, norm=2, steps=N, seed=0)
    noise = [np.asarray(keras.ops.convert_to_numpy(n)) for n in full._noise(x)]
    sides = full._windows(10, 10)

    def run(k):
        attack = Square(EPS, norm=2, steps=k, seed=0)
        attack._windows = lambda h, w: (sides[0][:k], sides[1][:k])
        part = (noise[0], noise[1], noise[2][:k], noise[3][:k])
        scores = ClassifierView(model).scores
        with float32_matmuls():
            found, margin, _ = compile_function(model, lambda a, b, n: attack._square_run(scores, a, b, n))(
                x, y, tuple(keras.ops.convert_to_tensor(t) for t in part))
            expected, expected_margin = reference_square_l2(
                lambda a: model.predict(a, verbose=0), x, y, EPS, sides[0][:k], part)
        return (np.asarray(keras.ops.convert_to_numpy(found)), np.asarray(keras.ops.convert_to_numpy(margin)),
                expected, expected_margin)

    def differs(k):
        found, _, expected, _ = run(k)
        return np.max(np.abs(found - expected)) > 1e-5

    print(f"backend {keras.backend.backend()}; devices: "
          f"{__import__('jax').devices() if keras.backend.backend() == 'jax' else 'tf'}")
    if not differs(N):
        print(f"no divergence in {N} iterations")
        return
    low, high = 0, N  # run(low) agrees (0: the starting point), run(high) differs
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if differs(mid) else (mid, high)
    k = high
    before = run(k - 1) if k > 1 else None
    after = run(k)
    rows = np.where(np.abs(after[0] - after[2]).reshape(len(x), -1).max(1) > 1e-5)[0]
    print(f"first divergent iteration: {k} (window side {sides[0][k - 1]}); examples {rows.tolist()}")
    for i in rows:
        line = f"  example {i}: margin after {k}: graph {after[1][i]:.9g} authors {after[3][i]:.9g}"
        if before is not None:
            line += (f"; before: graph {before[1][i]:.9g} authors {before[3][i]:.9g}, points apart "
                     f"{np.max(np.abs(before[0][i] - before[2][i])):.3g}")
        print(line)


if __name__ == "__main__":
    main()
