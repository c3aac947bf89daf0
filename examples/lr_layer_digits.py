"""The LR layer on real digits: a low-rank representation, stored as r numbers.

    python examples/lr_layer_digits.py [--epochs 40]   (about 30 s on a laptop CPU)
"""

import argparse

import keras
import numpy as np

import keras_lowrank as klr
from keras_lowrank import analysis, data

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=40)
epochs = parser.parse_args().epochs

train, info = data.load("digits", "train", batch_size=32)
test, _ = data.load("digits", "test", batch_size=256)

model = keras.Sequential([
    keras.Input(info.input_shape),
    keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
    keras.layers.Flatten(),
    keras.layers.Dense(64, activation="relu", name="features"),
    klr.LowRankProjection(rank=10, name="low_rank"),
    keras.layers.Dense(info.num_classes, name="logits"),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(train, epochs=epochs, verbose=0)
print("clean accuracy:", model.evaluate(test, verbose=0, return_dict=True)["accuracy"])

ranks = analysis.representation_ranks(model, test, layers=["features"])["features"]
print(f"features: {ranks.num_features} dims, 99% of the variance in {ranks.variance_rank}, "
      f"effective rank {ranks.effective_rank:.1f}")

# Store each sample's features as 10 coefficients and classify from them.
lr = model.get_layer("low_rank")
lr.threshold()
features = keras.Model(model.inputs, model.get_layer("features").output)
x, y = data.load_digits_arrays("test")
codes = lr.encode(features.predict(x, verbose=0))
logits = model.get_layer("logits")(lr.decode(codes))
print(f"accuracy from {codes.shape[1]} stored numbers per image:",
      np.mean(np.argmax(keras.ops.convert_to_numpy(logits), -1) == y))
