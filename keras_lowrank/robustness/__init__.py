"""Robustness evaluation: attacks, noise, Keras-native evaluation and reports."""

from keras_lowrank.robustness.attacks import (
    APGD,
    APGDT,
    FAB,
    FGSM,
    PGD,
    SPSA,
    Attack,
    AutoAttack,
    AutoAttackResult,
    Square,
)
from keras_lowrank.robustness.cleverhans_adapter import CleverhansAttack
from keras_lowrank.robustness.corruptions import CORRUPTIONS, Corruption, all_corruptions
from keras_lowrank.robustness.embedding_noise import NoisyEmbedding, embedding_noise
from keras_lowrank.robustness.exported import load_exported
from keras_lowrank.robustness.perturbations import GaussianNoise, Perturbation
from keras_lowrank.robustness.perturbed_model import PerturbedModel
from keras_lowrank.robustness.report import RobustnessReport, evaluate_robustness

__all__ = ["CleverhansAttack", "CORRUPTIONS", "Corruption", "all_corruptions", "FGSM", "PGD", "SPSA",
           "APGD", "APGDT", "FAB", "Square", "AutoAttack", "AutoAttackResult", "load_exported",
           "Attack", "Perturbation", "GaussianNoise",
           "NoisyEmbedding", "embedding_noise", "PerturbedModel", "RobustnessReport", "evaluate_robustness"]
