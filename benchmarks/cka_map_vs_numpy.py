"""All-pairs minibatch CKA map: ours vs a straightforward numpy implementation.

A 10-layer 1-D CNN on MNIST-1D's 4000 training signals (real, generated locally),
batches of 500, unbiased HSIC. The numpy baseline is the textbook estimator:
for every batch and every pair of layers, the Gram matrices and Song et al.'s
HSIC₁ with explicit matrix products (float64), as in docs/methods.md §3, on
activations from Keras' ``predict_on_batch``. Both timings include the forward
passes (shown separately for the baseline), after one warm-up call each (compilation
excluded: our extractor is cached per model); medians of 3 alternating runs. Goal (issue 5): ≥ 10× faster, equal
values.

    python benchmarks/cka_map_vs_numpy.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data, float32_matmuls  # noqa: E402
from keras_lowrank.analysis import cka_map  # noqa: E402

BATCH = 500
REPEATS = 3


def model_10_layers():
    keras.utils.set_random_seed(0)
    layers = [keras.Input((40, 1))]
    for filters in (16, 16, 32, 32, 32, 64):
        layers.append(keras.layers.Conv1D(filters, 3, padding="same", activation="relu"))
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(128, activation="relu"), keras.layers.Dense(64, activation="relu"),
               keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    return keras.Sequential(layers)


def hsic_unbiased(k, l):
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    ones = np.ones(n)
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 * ones @ k @ l @ ones / (n - 2)) / (n * (n - 3))


def numpy_cka_map(activations):
    """activations: per batch, a list of (n, p_i) arrays, one per layer."""
    m = len(activations[0])
    total = np.zeros((m, m))
    for batch in activations:
        grams = [a @ a.T for a in batch]
        for i in range(m):
            for j in range(m):
                total[i, j] += hsic_unbiased(grams[i], grams[j])
    mean = total / len(activations)
    return mean / np.sqrt(np.outer(np.diag(mean), np.diag(mean)))


def main():
    x, _ = data.load_mnist1d_arrays("train")
    model = model_10_layers()
    layers = [l for l in model.layers if isinstance(l, (keras.layers.Conv1D, keras.layers.Dense))]
    extractor = keras.Model(model.inputs, [l.output for l in layers])
    batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    with float32_matmuls():
        extractor.predict_on_batch(batches[0])  # compile once
    cka_map(model, batches[:1])
    numpy_times, forward_times, our_times = [], [], []
    for _ in range(REPEATS):  # medians: this 2-core machine's timings vary ±20 % run to run
        start = time.perf_counter()
        ours = cka_map(model, batches).matrix
        our_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with float32_matmuls():  # the forward passes as cka_map runs them (no TF32 on GPUs)
            activations = [[a.reshape(len(a), -1).astype(np.float64) for a in extractor.predict_on_batch(b)]
                           for b in batches]
        forward_times.append(time.perf_counter() - start)
        reference = numpy_cka_map(activations)
        numpy_times.append(time.perf_counter() - start)
    t_numpy, t_forward, t_ours = map(np.median, (numpy_times, forward_times, our_times))
    print(f"backend {keras.backend.backend()}: {len(layers)} layers, {len(x)} MNIST-1D signals, "
          f"batches of {BATCH}, unbiased linear CKA")
    print(f"medians of {REPEATS} runs: numpy {t_numpy:.2f} s (of which forward passes {t_forward:.2f} s), ours "
          f"{t_ours:.2f} s: {t_numpy / t_ours:.1f}× faster (goal ≥ 10×); "
          f"max |difference| {np.abs(ours - reference).max():.2e}")


if __name__ == "__main__":
    main()
