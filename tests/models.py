"""The small models the tests train for themselves (the demo has its own: tests do not
depend on it).

``digits_cnn`` is Conv(16)–Conv(32, stride 2)–Dense(64)–Dense(classes), logits, for 8×8×1
inputs (scikit-learn's digits), each kernel seeded: two calls with one seed build the
same model. ``lr_rank`` attaches a ``LowRankProjection`` of that rank (the layer's
defaults) to "features", as Sanyal et al. do to the penultimate representation."""

import keras

from keras_lowrank.layers import LowRankProjection


def digits_cnn(seed=0, num_classes=10, input_shape=(8, 8, 1), lr_rank=None):
    def init(k):
        return keras.initializers.GlorotUniform(seed=seed + k)

    projection = [] if lr_rank is None else [LowRankProjection(lr_rank, name="low_rank")]
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(0), name="conv_1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(1),
                            name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(2), name="features"),
        *projection,
        keras.layers.Dense(num_classes, kernel_initializer=init(3), name="logits"),
    ], name="digits_cnn")
