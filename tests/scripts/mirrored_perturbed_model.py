"""PerturbedModel under tf.distribute.MirroredStrategy on two logical CPUs.

Run as a script (logical devices must be set before TensorFlow initialises).
Prints "distributed=<acc> single=<acc> fit_loss=<loss> outside=<count>", the
last the count of out-of-range inputs the error names for a batch of 64 whose
one bad image goes to the second replica.
"""

import two_cpus  # noqa: F401  (first: backend and devices before TensorFlow starts)
import os  # noqa: E402
import sys  # noqa: E402

import tensorflow as tf  # noqa: E402

import keras  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from models import digits_cnn as small_cnn  # noqa: E402

x, y = data.load_digits_arrays("test")
ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
attack = PGD(0.1, steps=3, random_start=False)
keras.utils.set_random_seed(0)
single = small_cnn()
single.compile("adam", ce)
single.fit(*data.load_digits_arrays("train"), epochs=5, batch_size=64, verbose=0)
weights = single.get_weights()
wrapper = PerturbedModel(single, attack)
wrapper.compile(loss=ce, metrics=["accuracy"])
single_acc = wrapper.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["accuracy"]

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = small_cnn()
    model.set_weights(weights)
    distributed = PerturbedModel(model, PGD(0.1, steps=3, random_start=False))
    distributed.compile(optimizer="adam", loss=ce, metrics=["accuracy"])
dist_acc = distributed.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)["accuracy"]
history = distributed.fit(x, y, batch_size=64, epochs=1, verbose=0)
bad = x[:64].copy()
bad[40] += 2.0
try:
    distributed.evaluate(bad, y[:64], batch_size=64, verbose=0)
    outside = "none"
except ValueError as error:
    outside = str(error).split(" input(s)")[0].split()[-1]
print(f"replicas={strategy.num_replicas_in_sync} distributed={dist_acc:.6f} "
      f"single={single_acc:.6f} fit_loss={history.history['loss'][-1]:.6f} outside={outside}")
