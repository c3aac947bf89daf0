"""Representation analysis: rank measures and spectra."""

from keras_lowrank.analysis.ranks import (
    effective_rank,
    effective_rank_from_singular_values,
    singular_values,
    stable_rank,
    stable_rank_from_singular_values,
    variance_rank,
    variance_rank_from_singular_values,
)
from keras_lowrank.analysis.representation import (
    RepresentationRanks,
    representation_ranks,
)

__all__ = [
    "RepresentationRanks",
    "effective_rank",
    "effective_rank_from_singular_values",
    "representation_ranks",
    "singular_values",
    "stable_rank",
    "stable_rank_from_singular_values",
    "variance_rank",
    "variance_rank_from_singular_values",
]
