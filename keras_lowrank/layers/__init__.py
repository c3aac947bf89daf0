"""Keras layers of keras_lowrank."""

from keras_lowrank.layers.low_rank_projection import LowRankProjection

__all__ = ["LowRankProjection"]
