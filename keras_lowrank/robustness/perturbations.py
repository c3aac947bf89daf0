"""Random perturbations usable wherever an attack is (``PerturbedModel``,
``evaluate_robustness``): they act inside the compiled step, in ``keras.ops``."""

import keras
from keras import ops

from keras_lowrank._validation import check_clip, check_number


@keras.saving.register_keras_serializable(package="keras_lowrank")
class GaussianNoise:
    """x̃ = clip(x + σ ε), ε ~ N(0, I): a new draw for every batch.

    Args:
        sigma: the noise standard deviation (≥ 0), in input units.
        clip: (low, high) range of the noisy input, or None.
        seed: noise seed.
    """

    def __init__(self, sigma, clip=(0.0, 1.0), seed=None):
        self.sigma = check_number(sigma, "sigma", minimum=0.0)
        self.clip = check_clip(clip)
        self.seed = seed
        self._seed = keras.random.SeedGenerator(seed)

    def get_config(self):
        return {"sigma": self.sigma, "clip": self.clip, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def perturb_in_graph(self, model, x, y=None):
        noisy = x + self.sigma * keras.random.normal(ops.shape(x), seed=self._seed)
        return noisy if self.clip is None else ops.clip(noisy, *self.clip)

    @property
    def name(self):
        return f"Gaussian σ={self.sigma:g}"

    def __repr__(self):
        return f"GaussianNoise(sigma={self.sigma:g})"
