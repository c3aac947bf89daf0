"""Robustness evaluation: attacks and accuracy under noise."""

from keras_lowrank.robustness.attacks import FGSM, PGD, Attack
from keras_lowrank.robustness.evaluation import PerturbedModel
from keras_lowrank.robustness.noise import gaussian_noise_accuracy

__all__ = ["FGSM", "PGD", "Attack", "PerturbedModel", "gaussian_noise_accuracy"]
