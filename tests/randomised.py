"""A randomised defence for the tests of expectation over transformation (EOT)."""

import math

import keras


class RandomPhase(keras.layers.Layer):
    """x + 0.05 sin(100 x + 2π u), u uniform per pixel and pass: the output moves by at
    most 0.05, but the input gradient's factor 1 + 5 cos(·) is of random sign on each
    pass, 1 on average (a randomised defence whose single-pass gradients mislead)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x):
        u = keras.random.uniform(keras.ops.shape(x), seed=self.seed)
        return x + 0.05 * keras.ops.sin(100.0 * x + 2 * math.pi * u)
