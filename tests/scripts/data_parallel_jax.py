"""DLRT training and robust evaluation under Keras' ``keras.distribution.DataParallel``
on JAX with two host devices (``--xla_force_host_platform_device_count=2``), against
the same work on one device in the same process.

Run as a script (XLA's devices must be set before JAX starts). Writes OUT/jax.npz:
the one-device and the data-parallel weights, their ranks, the float32 yardstick (the
largest weight distance between one-device runs that differ only in the order of each
batch's sums), the clean and robust (PGD-3, no random start) accuracies of a model
trained further on one device, evaluated on one device and data-parallel, and the number of
devices a trained kernel is laid out on.

    python data_parallel_jax.py OUT
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense  # noqa: E402
from keras_lowrank.optimizers import DLRT  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

out = sys.argv[1]
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


def train(xs, ys, epochs=1):
    # One epoch (8 steps, two DLRT cycles): on JAX this model's trajectory later
    # passes near-equal singular values at a truncation, where rounding-level
    # differences (the order of a batch's sums) grow to 1e-2 (steps 9-24), which
    # would make the yardstick too loose to catch a wrong reduction.
    model = build()
    model.fit(xs, ys, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
    return model


def accuracies(weights):
    """Clean and robust (PGD-3 L∞ 0.1, no random start) test accuracy of a fresh
    model holding ``weights``, under the distribution in force."""
    model = build()
    model.set_weights(weights)
    model.compile(loss=ce, metrics=["accuracy"])
    clean = model.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    wrapper = PerturbedModel(model, PGD(0.1, steps=3, random_start=False))
    wrapper.compile(loss=ce, metrics=["accuracy"])
    robust = wrapper.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    return clean["accuracy"], robust["accuracy"]


ranks = lambda m: [layer.rank for layer in m.layers if hasattr(layer, "factors")]  # noqa: E731
devices = keras.distribution.list_devices("cpu")
single = train(x, y)
weights = single.get_weights()
# What is attacked: the same model trained further (all training digits, 4 epochs).
evaluated = train(x_all, y_all, epochs=4).get_weights()
single_accuracies = accuracies(evaluated)
rounding = 0.0
for seed in range(3):
    order = np.concatenate([start + np.random.default_rng(seed).permutation(64)
                            for start in range(0, len(x), 64)])
    permuted = train(x[order], y[order])
    rounding = max(rounding, max(float(np.abs(a - b).max())
                                 for a, b in zip(weights, permuted.get_weights())))

keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
parallel = train(x, y)
parallel_accuracies = accuracies(evaluated)
kernel = next(layer for layer in parallel.layers if hasattr(layer, "factors")).trainable_weights[0]
record = {"devices": np.array(len(devices)), "rounding": np.array(rounding),
          "ranks": np.array([ranks(single), ranks(parallel)]),
          "accuracies": np.array([single_accuracies, parallel_accuracies]),
          "kernel_devices": np.array(len(kernel.value.sharding.device_set))}
record.update({f"single{i}": w for i, w in enumerate(weights)})
record.update({f"parallel{i}": w for i, w in enumerate(parallel.get_weights())})
np.savez(os.path.join(out, "jax.npz"), **record)
print("done")
