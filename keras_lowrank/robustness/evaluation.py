"""Former home of ``PerturbedModel``, now ``keras_lowrank.robustness.perturbed_model``
(or ``keras_lowrank.robustness.PerturbedModel``). Importing this module still works for
one release and says where the class went."""

import warnings

from keras_lowrank._warning import LowRankWarning
from keras_lowrank.robustness.perturbed_model import PerturbedModel

__all__ = ["PerturbedModel"]

warnings.warn("keras_lowrank.robustness.evaluation is now keras_lowrank.robustness.perturbed_model; "
              "import PerturbedModel from keras_lowrank.robustness (this module goes in the next release).",
              LowRankWarning, stacklevel=2)
