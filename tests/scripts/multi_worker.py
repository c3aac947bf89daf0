"""DLRT training and robust evaluation under tf.distribute.MultiWorkerMirroredStrategy:
one of two worker processes on localhost (``TF_CONFIG``), or the one-device reference.

    python multi_worker.py worker INDEX PORT0 PORT1 OUT   # one worker of the cluster
    python multi_worker.py single OUT                     # the same work on one device

Each run writes OUT/<role>.npz: the trained weights, the layers' ranks, and the clean
and robust (PGD-3, no random start) test accuracies of the trained model evaluated by
the cluster (worker) or by one device (single), then by this process alone on the same
weights; the single run also writes the float32 yardstick (see ``mirrored_dlrt.py``):
the largest weight distance between one-device runs that differ only in the order of
each batch's sums.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
role = sys.argv[1]
if role == "worker":
    index, port0, port1, out = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
        "task": {"type": "worker", "index": index}})
    name = f"worker{index}"
else:
    out, name = sys.argv[2], "single"

import tensorflow as tf  # noqa: E402

# The strategy must exist before any other TensorFlow work (it sets up the
# collective runtime); the one-device run uses the default strategy.


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """Works around two Keras 3 bugs with more than one worker (keras-team/keras#20585):
    ``fit``/``evaluate`` reduce the first (x, y, sample_weight) batch, a tuple, which
    this strategy's ``reduce`` cannot take whole; and they reduce each step's scalar
    logs with ``axis=0``, which a scalar does not have. Reduce leaf by leaf, scalars
    without an axis (the mean over replicas either way)."""

    def reduce(self, reduce_op, value, axis):
        def one(v):
            if v is None:
                return None
            local = self.experimental_local_results(v)[0]
            return super(MultiWorkerMirroredStrategy, self).reduce(
                reduce_op, v, None if local.shape.rank == 0 else axis)
        return tf.nest.map_structure(one, value)


strategy = (MultiWorkerMirroredStrategy() if role == "worker" else tf.distribute.get_strategy())

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense  # noqa: E402
from keras_lowrank.optimizers import DLRT  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

x, y = data.load_digits_arrays("train")
x, y = x[:512], y[:512]
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


def train(xs, ys):
    model = build()
    model.fit(xs, ys, batch_size=64, epochs=3, shuffle=False, verbose=0)
    return model


def accuracies(model):
    """Clean and robust (PGD-3 L∞ 0.1, no random start) test accuracy."""
    model.compile(loss=ce, metrics=["accuracy"])
    clean = model.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    wrapper = PerturbedModel(model, PGD(0.1, steps=3, random_start=False))
    wrapper.compile(loss=ce, metrics=["accuracy"])
    robust = wrapper.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
    return clean["accuracy"], robust["accuracy"]


with strategy.scope():
    model = train(x, y)
    clean, robust = accuracies(model)
# The same weights evaluated by this process alone (the default strategy): the
# cluster's evaluation must give the same accuracies.
local = build()
local.set_weights(model.get_weights())
local_clean, local_robust = accuracies(local)
record = {"replicas": np.array(strategy.num_replicas_in_sync),
          "accuracies": np.array([clean, robust, local_clean, local_robust]),
          "ranks": np.array([layer.rank for layer in model.layers if hasattr(layer, "factors")])}
record.update({f"w{i}": w for i, w in enumerate(model.get_weights())})
if role == "single":
    rounding = 0.0
    for seed in range(3):
        order = np.concatenate([start + np.random.default_rng(seed).permutation(64)
                                for start in range(0, len(x), 64)])
        permuted = train(x[order], y[order])
        rounding = max(rounding, max(float(np.abs(a - b).max()) for a, b in
                                     zip(model.get_weights(), permuted.get_weights())))
    record["rounding"] = np.array(rounding)
np.savez(os.path.join(out, name + ".npz"), **record)
print("done", name)
