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
os.environ["JAX_PLATFORMS"] = "cpu"  # host devices, also where a GPU is present (its TF32 would be the yardstick)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2").strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dlrt_case import accuracies, build, ranks, rounding, train, x, x_all, y, y_all  # noqa: E402

# One epoch (8 steps, two DLRT cycles): on JAX this model's trajectory later passes
# near-equal singular values at a truncation, where rounding-level differences (the
# order of a batch's sums) grow to 1e-2 (steps 9-24), which would make the yardstick
# too loose to catch a wrong reduction.
EPOCHS = 1


def accuracies_of(weights):
    """Clean and robust accuracy of a fresh model holding ``weights``, under the
    distribution in force."""
    model = build()
    model.set_weights(weights)
    return accuracies(model)


out = sys.argv[1]
devices = keras.distribution.list_devices("cpu")
single = train(x, y, EPOCHS)
weights = single.get_weights()
# What is attacked: the same model trained further (all training digits, 4 epochs).
evaluated = train(x_all, y_all, 4).get_weights()
single_accuracies = accuracies_of(evaluated)
yardstick = rounding(weights, EPOCHS)

keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
parallel = train(x, y, EPOCHS)
parallel_accuracies = accuracies_of(evaluated)
kernel = next(layer for layer in parallel.layers if hasattr(layer, "factors")).trainable_weights[0]
record = {"devices": np.array(len(devices)), "rounding": np.array(yardstick),
          "ranks": np.array([ranks(single), ranks(parallel)]),
          "accuracies": np.array([single_accuracies, parallel_accuracies]),
          "kernel_devices": np.array(len(kernel.value.sharding.device_set))}
record.update({f"single{i}": w for i, w in enumerate(weights)})
record.update({f"parallel{i}": w for i, w in enumerate(parallel.get_weights())})
np.savez(os.path.join(out, "jax.npz"), **record)
print("done")
