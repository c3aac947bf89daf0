"""Keras layers of keras_lowrank."""

from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankDense
from keras_lowrank.layers.dynamic_low_rank_conv import DynamicLowRankConv1D, DynamicLowRankConv2D
from keras_lowrank.layers.dynamic_low_rank_einsum import DynamicLowRankEinsumDense
from keras_lowrank.layers.low_rank_projection import LowRankProjection

__all__ = ["DynamicLowRankConv1D", "DynamicLowRankConv2D", "DynamicLowRankDense", "DynamicLowRankEinsumDense",
           "LowRankProjection"]
