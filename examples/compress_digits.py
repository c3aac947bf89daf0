"""Compress a trained digits CNN: SVD to low rank, DLRT fine-tuning, export.

A CNN is trained as usual; ``to_low_rank`` turns its inner Conv2D and Dense
layers into DynamicLowRankConv2D / DynamicLowRankDense initialised by the SVD of
the trained kernels; a few epochs with the DLRT optimizer wrapper recover the
accuracy while the ranks adapt; ``export_compressed`` writes a model made of
Keras' own layers at the exact ranks (a `.keras` file and a SavedModel that load
without keras_lowrank), and the SavedModel is checked against the model.

    python examples/compress_digits.py [--epochs 20]   (about a minute on a laptop CPU)
"""

import argparse
import os
import tempfile

import keras
import numpy as np

from keras_lowrank import DLRT, callbacks, compression, data
from keras_lowrank.robustness import FGSM, PGD, evaluate_robustness

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20, help="dense training; fine-tuning gets a quarter")
epochs = parser.parse_args().epochs

train, info = data.load("digits", "train", batch_size=32)
test, _ = data.load("digits", "test", batch_size=256)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

keras.utils.set_random_seed(0)
dense = keras.Sequential([
    keras.Input(info.input_shape),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_1"),
    keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv_2"),
    keras.layers.Flatten(),
    keras.layers.Dense(256, activation="relu", name="features"),
    keras.layers.Dense(info.num_classes, name="logits"),
], name="dense_cnn")
dense.compile("adam", loss, metrics=["accuracy"])
dense.fit(train, epochs=epochs, verbose=0)

# conv_2 and features become low rank (first and last layers kept, as usual), at
# rank 16 (below break-even: 52 for conv_2, 205 for features); max_rank = 32 leaves
# DLRT room to grow, and it truncates by tol = 0.2 from there.
low = compression.to_low_rank(dense, rank=16, tol=0.2, skip_first=True)
low.compile(optimizer=DLRT(keras.optimizers.Adam(1e-3)), loss=loss, metrics=["accuracy"])
print("after the SVD, before fine-tuning:",
      f"{low.evaluate(test, verbose=0, return_dict=True)['accuracy']:.3f}")
low.fit(train, epochs=max(1, epochs // 4), verbose=0)
# fit ends by finishing the running DLRT cycle: the layers hold their truncated ranks.
print("ranks:", {layer.name: layer.rank for layer in callbacks.low_rank_layers(low)})
print(compression.compression_summary(low))

for label, model in (("dense", dense), ("low rank", low)):
    report = evaluate_robustness(model, test, attacks=[FGSM(0.05), PGD(0.05, steps=10)])
    print(f"\n== {label} ==")
    print(report.to_markdown())

with tempfile.TemporaryDirectory() as out:
    written = compression.export_compressed(low, out, formats=("keras", "saved_model"))
    compact = written["model"]
    print(f"\nexported: {compact.count_params():,} parameters (dense: {dense.count_params():,});",
          f"model.keras {os.path.getsize(written['keras']) / 1024:.0f} KiB")
    x, y = data.load_digits_arrays("test")
    try:
        import tensorflow as tf
    except ImportError:  # SavedModel export needs TensorFlow (any backend)
        tf = None
    if tf is not None:
        served = tf.saved_model.load(written["saved_model"])  # plain TF, no keras_lowrank
        logits = served.serve(tf.constant(x)).numpy()
        reference = keras.ops.convert_to_numpy(low.predict(x, verbose=0))
        print(f"SavedModel: accuracy {np.mean(logits.argmax(-1) == y):.3f}, "
              f"max |logit difference| vs the trained model {np.abs(logits - reference).max():.1e}")
