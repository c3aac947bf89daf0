"""Robustness evaluation."""

from keras_lowrank.robustness.noise import gaussian_noise_accuracy

__all__ = ["gaussian_noise_accuracy"]
