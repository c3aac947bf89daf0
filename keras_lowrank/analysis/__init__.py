"""Representation analysis: rank measures, spectra, CKA and class selectivity."""

from keras_lowrank.analysis.cka import CKAMap, cka_map, linear_cka, rbf_cka
from keras_lowrank.analysis.perturbation import perturbation_dimensionality
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
from keras_lowrank.analysis.selectivity import (
    LayerSelectivity,
    SelectivitySummary,
    class_selectivity,
    class_selectivity_index,
)

__all__ = [
    "CKAMap",
    "cka_map",
    "linear_cka",
    "rbf_cka",
    "LayerSelectivity",
    "RepresentationRanks",
    "SelectivitySummary",
    "class_selectivity",
    "class_selectivity_index",
    "perturbation_dimensionality",
    "effective_rank",
    "effective_rank_from_singular_values",
    "representation_ranks",
    "singular_values",
    "stable_rank",
    "stable_rank_from_singular_values",
    "variance_rank",
    "variance_rank_from_singular_values",
]
