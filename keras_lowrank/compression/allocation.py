"""Ranks for a budget: one allocation across all converted layers at once
(keras_lowrank/methods.md, "Ranks for a budget").

Keeping the k-th singular triplet of layer ℓ costs c_ℓ = n_in + n_out parameters (or
that many multiply-adds per output position) and removes σ_k² / Σ_j σ_j² of the
layer's relative squared error — of its kernel, or of its outputs on the calibration
data (``calibration.whitened_svd``). The allocation minimises the sum of the layers'
relative errors under the budget: since each layer's gains fall with k, taking triplets
in order of gain per unit of cost while they fit is the optimum of the relaxed problem
and within one rank step per layer of the integer one. Written here: Keras has no rank
allocation.
"""

import heapq

import numpy as np


def allocate_ranks(spectra, costs, limits, budget, min_rank=1):
    """Ranks within ``budget`` units for layers with singular values ``spectra``.

    Args:
        spectra: per layer, its singular values in decreasing order.
        costs: per layer, the units one rank costs (parameters or multiply-adds).
        limits: per layer, the largest rank allowed (below break-even, ≤ len(spectrum)).
        budget: the units all layers' factors may take together.
        min_rank: every layer's smallest rank.

    Returns:
        list of ranks, one per layer.

    Raises:
        ValueError: where even ``min_rank`` everywhere does not fit the budget.
    """
    ranks = [min(min_rank, limit) for limit in limits]
    spent = sum(r * c for r, c in zip(ranks, costs))
    if spent > budget:
        raise ValueError(f"the budget ({budget:,.0f}) is below what rank {min_rank} in every converted "
                         f"layer takes ({spent:,.0f}): raise `budget` or convert fewer layers.")
    energy = [float(np.sum(np.square(s))) or 1.0 for s in spectra]
    candidates = []  # (−gain per unit, layer): the next triplet of each layer

    def push(i):
        if ranks[i] < limits[i]:
            gain = float(spectra[i][ranks[i]]) ** 2 / energy[i]
            heapq.heappush(candidates, (-gain / costs[i], i))

    for i in range(len(ranks)):
        push(i)
    while candidates:
        _, i = heapq.heappop(candidates)
        if spent + costs[i] > budget:
            continue  # this layer's next rank does not fit; cheaper ones may still
        ranks[i] += 1
        spent += costs[i]
        push(i)
    return ranks
