"""The DLRT case shared by the distribution scripts (``mirrored_dlrt.py``,
``multi_worker.py``, ``data_parallel_jax.py``): a small low-rank CNN on 512 digits, its
training, its clean and robust accuracy, and the float32 yardstick. Import it after the
script has chosen its backend and devices."""

import keras
import numpy as np

from keras_lowrank import data
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense
from keras_lowrank.optimizers import DLRT
from keras_lowrank.robustness import PGD, PerturbedModel

x_all, y_all = data.load_digits_arrays("train")
x, y = x_all[:512], y_all[:512]
x_test, y_test = data.load_digits_arrays("test")
ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        DynamicLowRankConv2D(16, 3, padding="same", max_rank=8, rank=4, activation="relu"),
        keras.layers.Flatten(),
        DynamicLowRankDense(32, max_rank=16, rank=4, spectral_weight=0.05, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=4), loss=ce)
    return model


def train(xs, ys, epochs):
    model = build()
    model.fit(xs, ys, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    return model


def accuracies(model):
    """Clean and robust (PGD-3 L∞ 0.1, no random start) test accuracy."""
    model.compile(loss=ce, metrics=["accuracy"])
    clean = model.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    wrapper = PerturbedModel(model, PGD(0.1, steps=3, random_start=False))
    wrapper.compile(loss=ce, metrics=["accuracy"])
    robust = wrapper.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    return clean["accuracy"], robust["accuracy"]


def max_diff(a, b):
    """Largest entry-wise distance between two lists of weight arrays."""
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(a, b))


def rounding(weights, epochs):
    """The yardstick: the largest distance from ``weights`` (one device, ``epochs``) of
    the same training with the examples of each batch in other orders — the same
    steps in exact arithmetic, so what float32 rounding (this machine's kernels, the
    order of the sums, which splitting a batch over replicas changes) does to them."""
    largest = 0.0
    for seed in range(3):
        order = np.concatenate([start + np.random.default_rng(seed).permutation(64)
                                for start in range(0, len(x), 64)])
        largest = max(largest, max_diff(weights, train(x[order], y[order], epochs).get_weights()))
    return largest


def ranks(model):
    return [layer.rank for layer in model.layers if hasattr(layer, "factors")]
