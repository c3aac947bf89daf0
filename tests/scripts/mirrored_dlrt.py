"""DLRT training under tf.distribute.MirroredStrategy on two logical CPUs, against
the same training on one device (gradients are all-reduced means, so the steps
must agree). Run as a script: logical devices must exist before TF initialises.
Prints "replicas=<n> max_diff=<d> rounding=<e> ranks_single=<..> ranks_mirrored=<..> ortho=<e>".
"""

import two_cpus  # noqa: F401  (first: backend and devices before TensorFlow starts)
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense  # noqa: E402
from keras_lowrank.optimizers import DLRT  # noqa: E402

x, y = data.load_digits_arrays("train")
x, y = x[:512], y[:512]


def build():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        DynamicLowRankConv2D(16, 3, padding="same", max_rank=8, rank=4, activation="relu"),
        keras.layers.Flatten(),
        DynamicLowRankDense(32, max_rank=16, rank=4, spectral_weight=0.05, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def max_diff(a, b):
    return max(float(np.abs(u.numpy() - v.numpy()).max()) for u, v in zip(a.weights, b.weights))


single = build()
single.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
diff = max_diff(single, mirrored)
# The yardstick: the same training on one device with the examples of each batch
# in other orders — the same steps in exact arithmetic, so its distance from
# `single` is what float32 rounding (this machine's kernels, the order of the
# sums) does to 24 Adam steps. Two replicas change only the order of the sums.
rounding = 0.0
for seed in range(3):
    order = np.concatenate([start + np.random.default_rng(seed).permutation(64)
                            for start in range(0, len(x), 64)])
    permuted = build()
    permuted.fit(x[order], y[order], batch_size=64, epochs=3, shuffle=False, verbose=0)
    rounding = max(rounding, max_diff(single, permuted))
ranks = lambda m: ",".join(str(l.rank) for l in m.layers if hasattr(l, "factors"))  # noqa: E731
ortho = max(float(np.abs(u.T @ u - np.eye(u.shape[1])).max())
            for l in mirrored.layers if hasattr(l, "factors") for u in (l.factors()[0],))
print(f"replicas={strategy.num_replicas_in_sync} max_diff={diff:.3g} rounding={rounding:.3g} "
      f"ranks_single={ranks(single)} ranks_mirrored={ranks(mirrored)} ortho={ortho:.3g}")
