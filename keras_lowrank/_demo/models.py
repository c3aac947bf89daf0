"""Small reference models used by the demo, the examples and the tests."""

import keras

from keras_lowrank.layers import LowRankProjection


def small_cnn(input_shape=(8, 8, 1), num_classes=10, feature_dim=64,
              lr_rank=None, lr_kwargs=None, seed=0, filters=(16, 32), standardize=None):
    """[Normalization–]Conv(16)–Conv(32)–Dense(feature_dim, "features")[–LR]–Dense(classes).

    Works for images (h, w, c) and signals (length, c). With ``lr_rank`` a
    ``LowRankProjection`` of that rank is attached to the "features" layer, the
    penultimate representation, as in Sanyal et al. Outputs logits.
    ``standardize=(mean, variance)`` of the training inputs puts a
    ``Normalization`` layer first, so the model takes raw [0, 1] inputs (the
    range attacks and noise are defined in) but computes on standardised ones
    (MNIST-1D in [0, 1] has std 0.1: without it small_cnn reaches ~40 %, with
    it ~85 %).
    """
    conv = keras.layers.Conv2D if len(input_shape) == 3 else keras.layers.Conv1D
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)
    first = [] if standardize is None else [keras.layers.Normalization(
        axis=None, mean=float(standardize[0]), variance=float(standardize[1]),
        name="standardize")]
    layers = [
        keras.Input(input_shape),
        *first,
        conv(filters[0], 3, padding="same", activation="relu",
             kernel_initializer=init(0), name="conv_1"),
        conv(filters[1], 3, strides=2, padding="same", activation="relu",
             kernel_initializer=init(1), name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(feature_dim, activation="relu", name="features",
                           kernel_initializer=init(2)),
    ]
    if lr_rank is not None:
        layers.append(LowRankProjection(lr_rank, name="low_rank",
                                        **(lr_kwargs or {})))
    layers.append(keras.layers.Dense(num_classes, name="logits",
                                     kernel_initializer=init(3)))
    return keras.Sequential(layers, name="small_cnn" + ("_lr" if lr_rank else ""))
