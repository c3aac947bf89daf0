"""Robustness of a digits CNN, honestly measured, and PGD adversarial training.

    python examples/robustness_digits.py [--epochs 30]   (about a minute on a laptop CPU)
"""

import argparse

import keras

from keras_lowrank import data
from keras_lowrank.robustness import FGSM, PGD, PerturbedModel, all_corruptions, evaluate_robustness

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30)
epochs = parser.parse_args().epochs


def small_cnn(input_shape, num_classes):
    """Conv(16)–Conv(32, stride 2)–Dense(64, "features")–Dense(classes): logits."""
    init = lambda k: keras.initializers.GlorotUniform(seed=k)  # noqa: E731
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(0), name="conv_1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(1),
                            name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(2), name="features"),
        keras.layers.Dense(num_classes, kernel_initializer=init(3), name="logits"),
    ])


train, info = data.load("digits", "train", batch_size=32)
test, _ = data.load("digits", "test", batch_size=256)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
eps = (0.05, 0.1, 0.2)

for label in ("standard", "PGD-trained"):
    keras.utils.set_random_seed(0)
    model = small_cnn(info.input_shape, info.num_classes)
    # Adversarial training is ordinary fit on a PerturbedModel: PGD runs in the train step.
    trainer = model if label == "standard" else PerturbedModel(model, PGD(0.1, steps=5))
    trainer.compile("adam", loss)
    trainer.fit(train, epochs=epochs, verbose=0)
    report = evaluate_robustness(
        model, test,
        attacks=[FGSM(e) for e in eps] + [PGD(e, steps=10) for e in eps],
        noise_sigmas=(0.1, 0.3),
        corruptions=all_corruptions(severities=(3,)))
    print(f"\n== {label} ==\n{report}")
    report.plot(f"robustness_{label}.png", title=label)
