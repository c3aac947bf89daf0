"""The small models and data the tests build for themselves (the demo has its own:
tests do not depend on it).

``digits_cnn`` is Conv(16)–Conv(32, stride 2)–Dense(64)–Dense(classes), logits, for 8×8×1
inputs (scikit-learn's digits), each kernel seeded: two calls with one seed build the
same model. ``lr_rank`` attaches a ``LowRankProjection`` of that rank (the layer's
defaults) to "features", as Sanyal et al. do to the penultimate representation."""

import keras
import numpy as np

from keras_lowrank.layers import DynamicLowRankDense, LowRankProjection


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


def linear_classifier(classes=3, seed=0, features=8):
    """One Dense layer of ``classes`` logits on ``features`` inputs (the global seed set)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((features,)), keras.layers.Dense(classes)])


def unit_data(n=48, classes=3, seed=0, features=8):
    """``n`` inputs uniform in [0, 1)^features and labels drawn at random."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, features)).astype("float32"), rng.integers(0, classes, n)


def separable_data(n=96, features=16, classes=4, seed=0):
    """Gaussian inputs labelled by a random linear map: learnable by a small MLP."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    w = rng.normal(size=(features, classes))
    return x, (x @ w).argmax(axis=1).astype("int32")


def low_rank_mlp(max_rank=8, rank=4, seed=0):
    """16 → DynamicLowRankDense(32, "hidden") → Dense(4, "logits")."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16,)),
        DynamicLowRankDense(32, max_rank=max_rank, rank=rank, activation="relu", name="hidden"),
        keras.layers.Dense(4, name="logits")])


def dense_mlp(seed=0):
    """16 → Dense(32) → Dense(32) → Dense(4), random kernels (full spectra)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
