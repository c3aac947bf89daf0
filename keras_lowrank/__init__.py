"""keras_lowrank: compact, robust Keras models through low-rank structure.

Public API:
    LowRankProjection                  the LR layer (Sanyal et al.)
    DynamicLowRankDense, DynamicLowRankConv1D, DynamicLowRankConv2D,
    DynamicLowRankEinsumDense
                                       W = U S Vᵀ layers of adaptive rank (DLRT)
    keras_lowrank.optimizers.DLRT      the rank-adaptive integrator (optimizer wrapper)
    keras_lowrank.callbacks            RankTruncation, SpectralConditioning, LowRankMonitor
    keras_lowrank.compression          to_low_rank, truncate_ranks, compression_summary, export_compressed
    keras_lowrank.analysis             rank measures, spectra, CKA maps, class selectivity,
                                       perturbation dimensionality
    SelectivityRegularizedModel        the class-selectivity regularizer (keras_lowrank.regularizers)
    keras_lowrank.data                 offline and tfds datasets as tf.data
    keras_lowrank.robustness           attacks, noise, corruptions, PerturbedModel,
                                       SPSA (black-box), evaluate_robustness reports
    float32_matmuls                    exact float32 products on GPUs (no TF32), used by the
                                       analysis and the DLRT basis updates (keras_lowrank.precision)
    LowRankWarning                     the class of every warning the library issues

The formulas, their sources and where the code departs from the papers: methods.md,
shipped beside this file (docstrings cite its sections as "keras_lowrank/methods.md §n").
"""

from keras_lowrank import analysis, callbacks, compression, data, optimizers, regularizers, robustness
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.layers import (
    DynamicLowRankConv1D,
    DynamicLowRankConv2D,
    DynamicLowRankDense,
    DynamicLowRankEinsumDense,
    LowRankProjection,
)
from keras_lowrank.optimizers import DLRT
from keras_lowrank.precision import float32_matmuls
from keras_lowrank.regularizers import SelectivityRegularizedModel

__version__ = "0.1.0"

__all__ = [
    "DLRT",
    "DynamicLowRankConv1D",
    "DynamicLowRankConv2D",
    "DynamicLowRankDense",
    "DynamicLowRankEinsumDense",
    "LowRankProjection",
    "LowRankWarning",
    "SelectivityRegularizedModel",
    "analysis",
    "callbacks",
    "compression",
    "data",
    "float32_matmuls",
    "optimizers",
    "regularizers",
    "robustness",
    "__version__",
]
