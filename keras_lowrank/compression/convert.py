"""``to_low_rank``: Dense / Conv1D / Conv2D / EinsumDense → DynamicLowRankDense /
DynamicLowRankConv1D / DynamicLowRankConv2D / DynamicLowRankEinsumDense, initialised by
the truncated SVD of the trained kernel (keras_lowrank/methods.md §2); ``truncate_ranks``:
truncates every layer by its tol now — after DLRT's ``fit``, which usually stops
inside a cycle, on augmented bases."""

import warnings

import numpy as np

from keras_lowrank._keras_compat import build_input_shape, layer_paths
from keras_lowrank._low_rank.model import dlrt_of, low_rank_layers, truncate_layer
from keras_lowrank._low_rank.svd import matrix_svd
from keras_lowrank._validation import check_int, check_number
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.compression._common import (
    KINDS,
    LOW_RANK_CLASSES,
    _check_model,
    _kernel_matrix,
    _unconvertible,
    _unfinished_cycle,
)
from keras_lowrank.compression._surgery import copy_model, swap
from keras_lowrank.compression.allocation import allocate_ranks
from keras_lowrank.compression.calibration import second_moments, whitened_svd
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
from keras_lowrank.layers.low_rank_projection import LowRankProjection

__all__ = ["kernel_layers", "to_low_rank", "truncate_ranks"]


def truncate_ranks(model):
    """Truncates every dynamic low-rank layer of ``model`` now, by its ``tol``
    (‖d[r:]‖ < tol·‖d‖ on re-orthonormalised factors, at least ``min_rank``), as
    ``callbacks.RankTruncation`` and the end of each DLRT cycle do; the
    optimizer's slots move with the bases.

    ``fit`` with DLRT ends by finishing the running cycle itself; custom loops
    (``train_on_batch``) can stop inside one, where the layers hold the bases
    augmented at its start (up to twice the rank) — a valid model, but not the
    compressed one. Call this before measuring ranks or exporting. A DLRT
    optimizer's cycle restarts (the next step augments).

    Args:
        model: a Keras model holding dynamic low-rank layers.

    Returns:
        {layer name: new rank}.

    Examples:

        >>> import keras
        >>> from keras_lowrank import DynamicLowRankDense
        >>> layer = DynamicLowRankDense(6, max_rank=3, tol=0.1, name="f")
        >>> model = keras.Sequential([keras.Input((6,)), layer])
        >>> eye = np.eye(6, 3)
        >>> layer.set_factors(eye, np.diag([1.0, 0.01, 0.0]), eye)
        >>> truncate_ranks(model)
        {'f': 1}
    """
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    optimizer = getattr(model, "optimizer", None)
    for layer in low_rank_layers(model):
        truncate_layer(layer, optimizer)
    unfinished = _unfinished_cycle(model)
    if unfinished is not None:
        step, k = unfinished
        dlrt_of(optimizer).cycle_step.assign(-(-step // k) * k)
    return {layer.name: layer.rank for layer in low_rank_layers(model)}


def kernel_layers(model):
    """[(path, layer)] of every Dense, Conv1D, Conv2D and EinsumDense of ``model``, at any
    depth (nested models, custom layers, keras-hub's blocks): the paths ``to_low_rank``'s
    ``layers`` takes, to choose from.

    Args:
        model: a Keras model.

    Returns:
        a list of (path, layer): names from the model down, joined by "/".

    Examples:

        >>> import keras
        >>> tokens = keras.Input((6, 16))
        >>> attended = keras.layers.MultiHeadAttention(2, 8, name="mha")(tokens, tokens)
        >>> model = keras.Model(tokens, keras.layers.Dense(3, name="head")(attended))
        >>> [path for path, _ in kernel_layers(model)]
        ['mha/query', 'mha/key', 'mha/value', 'mha/attention_output', 'head']
    """
    return [(p, l) for p, l in layer_paths(model) if type(l) in KINDS]


def _rank_for(d, tol):
    tails = np.sqrt(np.cumsum((d**2)[::-1])[::-1])
    below = tails < tol * np.linalg.norm(d)
    return int(np.argmax(below)) if below.any() else len(d)


def to_low_rank(
    model,
    layers=None,
    rank=None,
    tol=0.1,
    max_rank=None,
    min_rank=1,
    spectral_weight=0.0,
    skip_first=False,
    skip_last=True,
    budget=None,
    budget_of="params",
    data=None,
    calibration_examples=256,
):

    """A copy of a trained model whose Dense, Conv1D, Conv2D and EinsumDense layers —
    wherever they sit: nested models, subclassed models, custom layers (the query, key,
    value and output projections inside ``keras.layers.MultiHeadAttention`` and
    keras-hub's attention and feed-forward blocks) — are DynamicLowRankDense /
    DynamicLowRankConv1D / DynamicLowRankConv2D / DynamicLowRankEinsumDense,
    initialised by the SVD of the trained kernel (as a matrix) truncated to ``rank``
    (an int), to a ``budget``, or by the tolerance rule ‖d[r:]‖ < tol·‖d‖ (float64; with
    ``rank`` given, a kernel of ≥ 256 on its short side takes only its leading triplets,
    by SciPy's ARPACK where installed, several times faster). Outputs match the
    original up to the truncation error. Other layers keep their weights; the model's
    class stays (a keras-hub ``CausalLM`` still generates). The copy is made by Keras'
    own saving, so the model and its custom layers must be serializable (get_config,
    registered); shared layers stay shared and tied embeddings tied.

    The converted layers keep activation, bias, regularizers (the kernel regularizer now
    on U S Vᵀ) and the bias constraint; a kernel constraint is dropped with a warning. A
    layer whose rank does not pay (r·(n_in + n_out) ≥ n_in·n_out: the factorised layer
    would be the larger) stays dense, with a warning naming it: the result is never
    bigger than ``model``. Grouped (depthwise), channels_first and causal convolutions,
    EinsumDense equations whose kernel shares an axis with input and output, and
    LoRA-enabled or quantised layers have no low-rank form here: the default skips them
    with a warning, naming one in ``layers`` raises. Other layers with kernels
    (SeparableConv2D, DepthwiseConv2D, transposed or 3-D convolutions, subclasses of
    Dense) stay as they are, named in a warning; so do layers that are low rank already
    (lower their ranks with ``truncate_ranks``). ``compression.save_model`` (or
    ``export_compressed``) saves a model converted inside custom layers so that it loads
    back: ``model.save`` would record only the custom layers' own configs.

    Args:
        layers: which layers to convert: paths (``"transformer_layer_0/self_attention/query"``:
            layer names from the model down, or Keras' ``layer.path``), names where unique, or a
            predicate ``fn(path, layer) -> bool`` over the convertible layers (default: every
            Dense, Conv1D, Conv2D and EinsumDense, minus the model's own first / last of them
            per ``skip_first`` / ``skip_last``).
        rank: every converted layer's rank (an int), instead of ``tol`` or ``budget``.
        tol: the rank rule ‖d[r:]‖ < tol·‖d‖ where neither ``rank`` nor ``budget`` is
            given (d: the kernel's singular values, or with ``data`` its output errors),
            and the new layers' DLRT truncation tolerance.
        budget: a fraction in (0, 1]: the converted layers together keep at most this
            share of their dense parameters (or multiply-adds, ``budget_of="macs"``),
            with ranks allocated across all layers at once by the smallest relative
            error per unit of cost (keras_lowrank/methods.md, "Ranks for a budget"). Exclusive
            with ``rank``.
        budget_of: ``"params"`` (default) or ``"macs"``: what ``budget`` counts.
        data: calibration inputs (arrays, an (x, y) pair, a tf.data.Dataset or a
            PyDataset): each kernel is then factorised to keep its outputs on them
            (activation-whitened SVD, ``compression.calibration``), not its weights.
        calibration_examples: how many examples of ``data`` to use (default 256).
        max_rank: storage rank for DLRT training: an int, or None for
            min(2·rank, n_in, n_out) (room for one augmentation) — with ``budget``, None
            also holds each layer at its allocated rank (``min_rank`` = that rank, ``tol``
            0.999: DLRT augments the bases and truncates back every cycle), so the
            bases adapt and the budget holds after fine-tuning; an int lets the ranks
            adapt by ``tol`` up to it.
        min_rank: passed to the new layers.
        spectral_weight: passed to the new layers.
        tol: passed to the new layers.

    Returns:
        the new model (the original is unchanged).

    Examples:
        the output layer stays dense (``skip_last``).

        >>> import keras
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> [type(layer).__name__ for layer in small.layers], small.layers[0].rank
        (['DynamicLowRankDense', 'Dense'], 4)
    """
    _check_model(model)
    rank = check_int(rank, "rank", allow_none=True)
    min_rank = check_int(min_rank, "min_rank")
    max_rank = check_int(max_rank, "max_rank", allow_none=True)
    tol = check_number(tol, "tol", minimum=0.0, maximum=1.0, strict=True)
    spectral_weight = check_number(spectral_weight, "spectral_weight", minimum=0.0)
    budget = check_number(budget, "budget", minimum=0.0, maximum=1.0, allow_none=True)
    if budget == 0.0:
        raise ValueError("`budget` must be in (0, 1] (a share of the converted layers' size), got 0.")
    if budget is not None and rank is not None:
        raise ValueError("Give `rank` or `budget`, not both: a budget chooses each layer's rank.")
    if budget_of not in ("params", "macs"):
        raise ValueError(f'`budget_of` must be "params" or "macs", got {budget_of!r}.')
    calibration_examples = check_int(calibration_examples, "calibration_examples")
    notes = []  # what the user is told, in one warning at the end
    chosen = _choose_layers(model, layers, skip_first, skip_last, notes)
    moments = (second_moments(model, [l for _, l in chosen], data, calibration_examples)
               if data is not None and chosen else {})
    factors = {}  # id(layer): (factor(r) -> (u, s, v), spectrum, n_in, n_out)
    for path, layer in chosen:
        kernel = _kernel_matrix(layer)
        if not np.all(np.isfinite(kernel)):
            raise ValueError(f"Layer {path!r} has NaN or ±inf in its kernel: it has no SVD. Check "
                             "the training that produced it (a diverged loss?) before converting.")
        if id(layer) in moments:
            factor, d = whitened_svd(kernel, moments[id(layer)])
        else:
            partial = None if rank is None or budget is not None else max(rank, min_rank)
            u, d, v = matrix_svd(kernel, rank=partial)
            factor = (lambda r, u=u, d=d, v=v: (u[:, :r], d[:r], v[:, :r]))
        factors[id(layer)] = (factor, d, *kernel.shape)
    if budget is not None:
        chosen_ranks = _budget_ranks([l for _, l in chosen], factors, budget, budget_of, min_rank)
    plans, kept_dense = {}, []
    for path, layer in chosen:
        factor, d, n_in, n_out = factors[id(layer)]
        full = min(n_in, n_out)
        if budget is not None:
            r = chosen_ranks[id(layer)]
            if r is None:  # no rank below break-even for this layer
                kept_dense.append(f"{path} (no rank of {n_in}×{n_out} pays)")
                continue
        else:
            r = min(rank if rank is not None else _rank_for(d, tol), full)
            r = max(r, min_rank)
        if r * (n_in + n_out) >= n_in * n_out:
            kept_dense.append(f"{path} (rank {r} ≥ break-even "
                              f"{n_in * n_out / (n_in + n_out):.1f} of {n_in}×{n_out})")
            continue
        # room for one augmentation; with a budget (and no `max_rank`) each layer is then held
        # at its allocated rank: DLRT augments to 2r and truncates back to r every cycle, so
        # the bases adapt and the budget holds after fine-tuning
        r_max = max_rank if max_rank is not None else min(2 * r, full)
        if r_max < r:
            raise ValueError(f"`max_rank` ({r_max}) is below the rank chosen for {path!r} ({r}).")
        u, s_r, v = factor(r)
        plans[id(layer)] = (u, s_r, v, r, r_max)
    constrained = [p for p, l in chosen if id(l) in plans and l.kernel_constraint is not None]
    if constrained:
        notes.append(
            f"to_low_rank dropped the kernel_constraint of {constrained}: a low-rank kernel is "
            "trained through its factors and takes no kernel constraint (regularizers, the "
            "bias constraint, initializers and activations are carried).")
    if kept_dense:
        notes.append(
            "to_low_rank left these layers dense: at their rank the factorised layer "
            "(r·(n_in + n_out) parameters) would be larger than the dense one "
            f"(n_in·n_out): {', '.join(kept_dense)}. Use a larger `tol` or a smaller "
            "`rank` to compress them.")
    if not plans:  # a conversion that converts nothing says so (the notes above say why)
        notes.append(
            "to_low_rank converted no layer: the model it returns computes what `model` does, with "
            "the same layers. " + ("The layers asked for do not pay at this rank or tol (see above)."
                                   if chosen else "The model has no Dense, Conv1D, Conv2D or EinsumDense "
                                   "layer it converts (the last one stays dense: skip_last=True)."))
    if notes:  # one warning, however many things there are to say
        warnings.warn(notes[0] if len(notes) == 1 else f"to_low_rank has {len(notes)} notes:\n- " + "\n- ".join(notes),
                      stacklevel=2, category=LowRankWarning)
    converted, twins = copy_model(model, "to_low_rank", [(p, l) for p, l in chosen if id(l) in plans])
    for path, layer in chosen:
        plan = plans.get(id(layer))
        if plan is None:
            continue
        twin = twins[id(layer)]
        fixed = budget is not None and max_rank is None
        u, d, v, r, r_max = plan
        new = LOW_RANK_CLASSES[type(twin)].from_keras_layer(
            twin, (u.astype("float32"), d.astype("float32"), v.astype("float32")), max_rank=r_max,
            min_rank=r if fixed else min(min_rank, r), tol=FIXED_RANK_TOL if fixed else tol,
            spectral_weight=spectral_weight)
        swap(converted, path, twin, new)
    return converted


def _choose_layers(model, layers, skip_first, skip_last, notes):
    """[(path, layer)] of ``model`` to convert, wherever they sit (nested models, custom
    layers): by default every Dense, Conv1D, Conv2D and EinsumDense with a low-rank form
    (minus the model's own first / last per ``skip_first`` / ``skip_last``); else those
    ``layers`` names (paths, Keras layer paths or unique names) or picks (a predicate).
    What the user should hear about the layers left as they are goes to ``notes``."""
    found = layer_paths(model)
    candidates = [(p, l) for p, l in found if type(l) in KINDS]
    why = {id(l): _unconvertible(l) for _, l in candidates}
    if layers is None or callable(layers):
        skipped = [f"{p} ({why[id(l)]})" for p, l in candidates if why[id(l)]]
        usable = [(p, l) for p, l in candidates if not why[id(l)]]
        if callable(layers):
            return [(p, l) for p, l in usable if layers(p, l)]
        if skipped:
            notes.append(
                f"to_low_rank left these layers as they are: {', '.join(skipped)}; "
                "only groups=1, channels_last, non-causal convolutions and EinsumDense layers "
                "whose kernel is one matrix convert.")
        own = [l for p, l in usable if "/" not in p]
        dropped = {id(own[0])} if skip_first and own else set()
        dropped |= {id(own[-1])} if skip_last and own else set()
        factorised = [p for p, l in found if isinstance(l, DynamicLowRankBase)]
        if factorised:
            shown = ", ".join(factorised[:3]) + (", …" if len(factorised) > 3 else "")
            notes.append(
                f"to_low_rank left the model's {len(factorised)} layer(s) that are low rank already "
                f"as they are ({shown}), whatever `rank` or `tol` asks: to lower their ranks, set "
                "their `tol` and call compression.truncate_ranks(model), or convert the dense model.")
        others = _other_kernel_layers(found, KINDS)
        if others:
            notes.append(
                "to_low_rank converts Dense, Conv1D, Conv2D and EinsumDense layers (those classes "
                f"exactly); these layers with kernels stay as they are: {others}.")
        return [(p, l) for p, l in usable if id(l) not in dropped]
    if isinstance(layers, str):
        layers = [layers]
    by_name = {}
    for p, l in found:
        for key in {p, getattr(l, "path", p), l.name}:
            by_name.setdefault(key, []).append((p, l))
    chosen = []
    for name in layers:
        matches = {id(l): (p, l) for p, l in by_name.get(name, [])}
        if not matches:
            shown = [p for p, _ in candidates]
            raise ValueError(
                f"`layers` names {name!r}, which is no layer of the model; its Dense/Conv1D/Conv2D/"
                f"EinsumDense layers are {shown[:12]}{' …' if len(shown) > 12 else ''} (a path, a "
                "layer's name where it is unique, or a predicate fn(path, layer) -> bool).")
        if len(matches) > 1:
            raise ValueError(f"`layers` names {name!r}, the name of several layers: "
                             f"{sorted(p for p, _ in matches.values())}; give their paths.")
        path, layer = next(iter(matches.values()))
        if type(layer) not in KINDS:
            raise ValueError(f"`layers` names {path!r}, a {type(layer).__name__}: to_low_rank converts "
                             "Dense, Conv1D, Conv2D and EinsumDense layers.")
        if why[id(layer)]:
            raise ValueError(
                f"Layer {path!r} has {why[id(layer)]}; only groups=1, channels_last, non-causal "
                "convolutions and EinsumDense layers whose kernel is one matrix convert.")
        chosen.append((path, layer))
    return chosen

#: the truncation tolerance of a layer held at its budgeted rank (with min_rank = that rank):
#: every DLRT cycle truncates the augmented 2r basis back to r, the fixed-rank augmented
#: integrator (‖d[j:]‖ < 0.999‖d‖ holds from j = 1 on, so the floor decides)
FIXED_RANK_TOL = 0.999


def _budget_ranks(chosen, factors, budget, budget_of, min_rank):
    """{id(layer): rank, or None where no rank is below break-even} within ``budget``
    (a fraction of the chosen layers' dense parameters or multiply-adds)."""
    usable, costs, limits, spectra = [], [], [], []
    total = 0.0
    for layer in chosen:
        _, d, n_in, n_out = factors[id(layer)]
        per_position = _positions_per_example(layer, n_out) if budget_of == "macs" else 1
        total += per_position * n_in * n_out
        limit = min(len(d), (n_in * n_out - 1) // (n_in + n_out))  # strictly below break-even
        if limit < min_rank:
            continue
        usable.append(layer)
        costs.append(per_position * (n_in + n_out))
        limits.append(limit)
        spectra.append(d)
    ranks = allocate_ranks(spectra, costs, limits, budget * total, min_rank) if usable else []
    found = {id(layer): None for layer in chosen}
    found.update({id(layer): r for layer, r in zip(usable, ranks)})
    return found


def _positions_per_example(layer, n_out):
    """Output positions per example at which the kernel matrix multiplies (1 for a
    Dense on vectors, h'·w' for a convolution): its output size over n_out."""
    shape = build_input_shape(layer)
    out = layer.compute_output_shape(tuple(shape))
    return max(1, int(np.prod([d for d in out[1:] if d is not None])) // n_out)


def _other_kernel_layers(found, kinds):
    """The layers (of [(path, layer)] ``found``) that hold a kernel but are no class
    ``to_low_rank`` converts (e.g. Xception's SeparableConv2D, MobileNet's
    DepthwiseConv2D, a subclass of Dense), grouped by class: "Class ×n (first names…; why)"."""
    by_class = {}
    for _, layer in found:
        if type(layer) in kinds or isinstance(layer, (DynamicLowRankBase, LowRankProjection)):
            continue  # converted, or low rank already
        if any(hasattr(layer, name) for name in ("kernel", "depthwise_kernel", "pointwise_kernel")):
            by_class.setdefault(type(layer).__name__, []).append(layer.name)
    parts = []
    for name, members in by_class.items():
        why = ("one filter per channel: no low-rank form" if name.startswith("DepthwiseConv")
               else "not converted: build the model from the converted classes to compress it")
        shown = ", ".join(members[:3]) + (", …" if len(members) > 3 else "")
        parts.append(f"{name} ×{len(members)} ({shown}; {why})")
    return "; ".join(parts)
