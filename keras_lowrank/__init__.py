"""keras_lowrank: compact, robust Keras models through low-rank structure.

Public API:
    LowRankProjection                  the LR layer (Sanyal et al.)
    keras_lowrank.analysis             rank measures, spectra, streaming ranks
    keras_lowrank.data                 offline and tfds datasets as tf.data
    keras_lowrank.robustness           attacks, noise, corruptions, PerturbedModel,
                                       evaluate_robustness reports
"""

from keras_lowrank import analysis, data, robustness
from keras_lowrank.layers import LowRankProjection

__version__ = "0.1.0"

__all__ = ["LowRankProjection", "analysis", "data", "robustness", "__version__"]
