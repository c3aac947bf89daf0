"""Convert trained models to dynamic low-rank layers, summarise, export small files.

- ``to_low_rank``: Dense / Conv1D / Conv2D / EinsumDense → DynamicLowRankDense /
  DynamicLowRankConv1D / DynamicLowRankConv2D / DynamicLowRankEinsumDense,
  initialised by the truncated SVD of the trained kernel (docs/methods.md §2).
- ``compression_summary``: per layer and total parameters, ranks, compression
  rate 1 − Σ(n_in r + r² + n_out r)/Σ(n_in n_out) (biases on neither side, as
  docs/methods.md §2), multiply-adds, cond(S).
- ``truncate_ranks``: truncates every layer by its tol now — after DLRT's
  ``fit``, which usually stops inside a cycle, on augmented bases.
- ``export_compressed``: rebuilds the model at the exact ranks from Keras' own
  layers (Dense(r) → Dense(units); ConvND(r) → 1×1 ConvND; two EinsumDense), so the ``.keras``
  file and the SavedModel really are small and load without keras_lowrank.
"""

import os
import shutil
import tempfile
import warnings

import keras
import numpy as np
from keras import ops

from keras_lowrank._files import check_output_folder, staged_folder
from keras_lowrank._keras_compat import (
    all_sublayers,
    build_input_shape,
    direct_sublayers,
    is_graph_model,
)
from keras_lowrank._low_rank_model import condition_number, dlrt_of, low_rank_layers, truncate_layer
from keras_lowrank._svd import matrix_svd
from keras_lowrank._validation import check_int, check_number
from keras_lowrank.layers.dynamic_low_rank import (
    DynamicLowRankBase,
    DynamicLowRankConv1D,
    DynamicLowRankConv2D,
    DynamicLowRankDense,
    DynamicLowRankEinsumDense,
    _DynamicLowRankConv,
    _einsum_plan,
    einsum_kernel_matrix,
)
from keras_lowrank.layers.low_rank_projection import LowRankProjection

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D)
_KINDS = (keras.layers.Dense, keras.layers.EinsumDense) + _CONVS

_FORMATS = ("keras", "saved_model", "tflite")

__all__ = ["to_low_rank", "truncate_ranks", "compression_summary", "CompressionSummary",
           "compressed_model", "export_compressed"]


# -- summary -------------------------------------------------------------------
class CompressionSummary:
    """``compression_summary``'s result: rows (one dict per Dense/Conv2D-like layer)
    and totals; ``str()`` is a Markdown table.

    Attributes:
        rows: one dict per layer (see ``compression_summary``).
        total: the totals (see ``compression_summary``).

    Examples:

        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> summary = compression_summary(small)
        >>> [row["rank"] for row in summary.rows], summary.total["low_rank_params"]
        ([4, 4, None], 576)
    """

    def __init__(self, rows, total):
        self.rows = rows
        self.total = total

    def to_dict(self):
        return {"layers": self.rows, "total": self.total}

    def to_markdown(self):
        head = ("| layer | shape | rank | dense params | exported params | compression | dense MACs "
                "| low-rank MACs | cond(S) |")
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            rank = "dense (kept)" if r["rank"] is None else f"{r['rank']}/{r['max_rank']}"
            cond = "" if r["cond"] is None else f"{r['cond']:.3g}"
            lines.append(
                f"| {r['layer']} | {r['n_in']}×{r['n_out']} | {rank} | "
                f"{r['dense_params']:,} | {r['low_rank_params']:,} | {r['compression_rate']:.1%} | "
                f"{r['dense_macs']:,} | {r['low_rank_macs']:,} | {cond} |"
            )
        t = self.total
        lines.append(
            f"| **low-rank layers** | | | {t['dense_params']:,} | {t['low_rank_params']:,} | "
            f"{t['compression_rate']:.1%} | {t['dense_macs']:,} | {t['low_rank_macs']:,} | |"
        )
        lines.append(
            f"| **whole model** | | | {t['model_dense_params']:,} | "
            f"{t['model_exported_params']:,} | {t['model_compression_rate']:.1%} | | | |"
        )
        return "\n".join(lines)

    __str__ = to_markdown


def _bias_size(layer):
    return int(np.prod(layer.bias.shape)) if getattr(layer, "bias", None) is not None else 0


def compression_summary(model):
    """What ``export_compressed`` writes, counted per layer and for the model.

    Rows, one per dynamic low-rank layer: n_in, n_out, rank r, max_rank,
    ``dense_params`` n_in·n_out + bias (the equivalent Keras layer),
    ``low_rank_params`` r(n_in + n_out) + bias (the exported pair of layers, S
    folded into the second), their ``compression_rate``, multiply-adds per
    sample of the dense and of the exported layer (r(n_in + n_out) per output
    position of a convolution, and per position of a Dense applied to feature
    maps), cond(S_r). Plain Dense/Conv2D layers (e.g. left dense by
    ``to_low_rank`` because their rank did not pay) get a row with rank None.

    Totals: over the low-rank layers (``dense_params``, ``low_rank_params``,
    ``compression_rate``, MACs), and for the whole model: ``model_dense_params``
    (every low-rank layer dense), ``model_exported_params`` (exactly the
    parameter count of ``compressed_model(model)``) and
    ``model_compression_rate``.

    Args:
        model: a Keras model (nested models and layers are searched).

    Returns:
        a ``CompressionSummary``.

    Examples:
        a 32 × 32 kernel at rank 4 stores 4·(32 + 32) + 32 = 288 numbers
        instead of 32·32 + 32 = 1056.

        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> row = compression_summary(small).rows[0]
        >>> row["dense_params"], row["low_rank_params"]
        (1056, 288)
    """
    rows = []
    low_rank = low_rank_layers(model)
    for layer in low_rank:
        r, n_in, n_out = layer.rank, layer.n_in, layer.n_out
        bias = _bias_size(layer)
        dense_params, low_params = n_in * n_out + bias, r * (n_in + n_out) + bias
        if isinstance(layer, (_DynamicLowRankConv, DynamicLowRankEinsumDense)):
            dense_macs, low_macs = layer.multiply_adds(r)
        else:  # a Dense on feature maps (batch, h, w, c) multiplies once per position
            positions = _positions(layer)
            dense_macs, low_macs = positions * n_in * n_out, positions * r * (n_in + n_out)
        rows.append(dict(
            layer=layer.name, n_in=n_in, n_out=n_out, rank=r, max_rank=layer.max_rank,
            dense_params=dense_params, low_rank_params=low_params,
            compression_rate=1.0 - low_params / dense_params,
            dense_macs=dense_macs, low_rank_macs=low_macs, cond=condition_number(layer),
        ))
    for layer in all_sublayers(model):
        if type(layer) in _KINDS and layer.built:
            n_in, n_out = _kernel_matrix(layer).shape
            params = n_in * n_out + _bias_size(layer)
            rows.append(dict(layer=layer.name, n_in=n_in, n_out=n_out, rank=None, max_rank=None,
                             dense_params=params, low_rank_params=params, compression_rate=0.0,
                             dense_macs=0, low_rank_macs=0, cond=None))
    low_rows = [r for r in rows if r["rank"] is not None]
    dense = sum(r["dense_params"] for r in low_rows)
    low = sum(r["low_rank_params"] for r in low_rows)
    held = sum(int(np.prod(w.shape)) for layer in low_rank for w in layer.weights)
    # A LowRankProjection exports as an Identity or one Dense (``_projection_as_keras``).
    projections = [l for l in all_sublayers(model) if isinstance(l, LowRankProjection) and l.built]
    held += sum(int(np.prod(w.shape)) for l in projections for w in l.weights)
    exported_projections = sum(l.features * (l.features + 1) for l in projections
                               if l.output_mode != "input")
    others = model.count_params() - held + exported_projections if model.built else 0
    total = dict(
        dense_params=dense, low_rank_params=low,
        compression_rate=(1.0 - low / dense) if dense else 0.0,
        dense_macs=sum(r["dense_macs"] for r in low_rows),
        low_rank_macs=sum(r["low_rank_macs"] for r in low_rows),
        model_dense_params=others + dense, model_exported_params=others + low,
        model_compression_rate=(1.0 - (others + low) / (others + dense)) if others + dense else 0.0,
    )
    return CompressionSummary(rows, total)


def _unfinished_cycle(model):
    """(steps taken, steps_per_cycle) if the model's DLRT optimizer stopped
    inside a cycle, where the layers hold the augmented bases; else None."""
    optimizer = dlrt_of(getattr(model, "optimizer", None))
    if optimizer is None or not optimizer.built:
        return None
    step = int(ops.convert_to_numpy(optimizer.cycle_step))
    return (step, optimizer.steps_per_cycle) if step % optimizer.steps_per_cycle else None


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


# -- conversion ----------------------------------------------------------------
def _check_clonable(model, argument="model"):
    if not is_graph_model(model):
        raise ValueError(
            f"`{argument}` must be a Sequential or functional keras.Model "
            f"(subclassed models cannot be rebuilt layer by layer), got {type(model).__name__}."
        )


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
):

    """A copy of a trained Sequential/functional model whose Dense, Conv1D, Conv2D and
    EinsumDense layers are DynamicLowRankDense / DynamicLowRankConv1D / DynamicLowRankConv2D /
    DynamicLowRankEinsumDense, initialised by the SVD of the trained kernel (as a
    matrix) truncated to ``rank`` (an int) or, if ``rank`` is None,
    by the tolerance rule ‖d[r:]‖ < tol·‖d‖ (float64; with ``rank`` given, a kernel of
    ≥ 256 on its short side takes only its leading triplets, by SciPy's ARPACK where
    installed: VGG16's conversion 33 → 4 s). Outputs match the original up to the
    truncation error. Other layers keep their weights. The converted layers keep
    activation, bias, regularizers (the kernel regularizer now on U S Vᵀ) and the
    bias constraint; a kernel constraint is dropped with a warning. A layer whose rank does
    not pay (r·(n_in + n_out) ≥ n_in·n_out: the factorised layer would be the
    larger) stays dense, with a warning naming it: the result is never bigger
    than ``model``. The model's own layers are converted; Dense/Conv2D layers
    inside a nested model or a custom layer are not (``clone_model`` rebuilds
    those whole): named in ``layers`` they raise, otherwise a warning names
    them — convert the inner model first, or build the model flat (this includes
    the projections inside ``keras.layers.MultiHeadAttention``: build attention from
    EinsumDense layers to compress them, as ``examples/transformer_digits.py``
    does). Grouped (depthwise), channels_first and causal convolutions, and
    EinsumDense equations whose kernel shares an axis with input and output, have no
    low-rank form: the default skips them with a warning, naming one in ``layers``
    raises. Other layers with kernels (SeparableConv2D, DepthwiseConv2D, transposed or
    3-D convolutions, subclasses of Dense) stay as they are, named in a warning; so do
    layers that are low rank already (lower their ranks with ``truncate_ranks``).

    Args:
        layers: names of the layers to convert (default: every Dense, Conv1D, Conv2D and EinsumDense,
            minus the first / last of them per ``skip_first`` / ``skip_last``).
        max_rank: storage rank for DLRT training: an int, or None for
            min(2·rank, n_in, n_out) (room for one augmentation).
        min_rank: passed to the new layers.
        spectral_weight: passed to the new layers.
        tol: passed to the new layers.

    Returns:
        the new model (the original is unchanged).

    Examples:
        the output layer stays dense (``skip_last``).

        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> [type(layer).__name__ for layer in small.layers], small.layers[0].rank
        (['DynamicLowRankDense', 'Dense'], 4)
    """
    _check_clonable(model)
    if not model.built:
        raise ValueError("`model` is not built: its layers have no weights to factorise yet. Give it an "
                         "Input (keras.Input(shape)) or call it on a batch, and train it, first.")
    kinds = _KINDS
    # clone_model rebuilds the model's own layers one by one; a nested model or a
    # custom layer is rebuilt whole, so the Dense/Conv2D layers inside it cannot be
    # swapped: they are named (an error if asked for, a warning otherwise), never
    # left dense in silence.
    candidates = [l for l in direct_sublayers(model) if type(l) in kinds]
    nested = {}
    for parent in direct_sublayers(model):
        for l in all_sublayers(parent):
            if type(l) in kinds:
                nested[l.name] = parent.name
    if layers is None:
        # grouped (e.g. ConvNeXt's depthwise) and channels_first convolutions have no
        # low-rank form here: the default skips them, naming them
        why = {l.name: _unconvertible(l) for l in candidates}
        skipped = [f"{name} ({reason})" for name, reason in why.items() if reason]
        candidates = [l for l in candidates if not why[l.name]]
        if skipped:
            warnings.warn(
                f"to_low_rank left these layers as they are: {', '.join(skipped)}; "
                "only groups=1, channels_last, non-causal convolutions and EinsumDense layers "
                "whose kernel is one matrix convert.", stacklevel=2)
        chosen = candidates[1 if skip_first else 0: len(candidates) - (1 if skip_last else 0)]
        factorised = [l.name for l in direct_sublayers(model) if isinstance(l, DynamicLowRankBase)]
        if factorised:
            shown = ", ".join(factorised[:3]) + (", …" if len(factorised) > 3 else "")
            warnings.warn(
                f"to_low_rank left the model's {len(factorised)} layer(s) that are low rank already "
                f"as they are ({shown}), whatever `rank` or `tol` asks: to lower their ranks, set "
                "their `tol` and call compression.truncate_ranks(model), or convert the dense model.",
                stacklevel=2)
        others = _other_kernel_layers(model, kinds)
        if others:
            warnings.warn(
                "to_low_rank converts Dense, Conv1D, Conv2D and EinsumDense layers (those classes "
                f"exactly); these layers with kernels stay as they are: {others}.", stacklevel=2)
        if nested:
            warnings.warn(
                "to_low_rank left these Dense/Conv/EinsumDense layers dense: they sit inside nested "
                f"models or custom layers, which it rebuilds whole: {sorted(nested)} (inside "
                f"{sorted(set(nested.values()))}). Convert the inner model itself with "
                "to_low_rank before building the outer one, or build the model flat.",
                stacklevel=2)
    else:
        inside = [n for n in layers if n in nested]
        if inside:
            raise ValueError(
                f"`layers` names {inside}, inside the nested model(s) or custom layer(s) "
                f"{sorted({nested[n] for n in inside})}, which to_low_rank rebuilds whole and "
                "cannot convert layer by layer. Convert the inner model itself with "
                "to_low_rank before building the outer one, or build the model flat.")
        names = {l.name: l for l in candidates}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(
                f"`layers` names {unknown} are not Dense/Conv1D/Conv2D/EinsumDense layers of the model; "
                f"choose from {sorted(names)}."
            )
        chosen = [names[n] for n in layers]
    rank = check_int(rank, "rank", allow_none=True)
    min_rank = check_int(min_rank, "min_rank")
    max_rank = check_int(max_rank, "max_rank", allow_none=True)
    tol = check_number(tol, "tol", minimum=0.0, maximum=1.0, strict=True)
    spectral_weight = check_number(spectral_weight, "spectral_weight", minimum=0.0)
    plans, kept_dense = {}, []
    for layer in chosen:
        reason = _unconvertible(layer)
        if reason:
            raise ValueError(
                f"Layer {layer.name!r} has {reason}; only groups=1, channels_last, non-causal "
                "convolutions and EinsumDense layers whose kernel is one matrix convert."
            )
        kernel = _kernel_matrix(layer)
        if not np.all(np.isfinite(kernel)):
            raise ValueError(f"Layer {layer.name!r} has NaN or ±inf in its kernel: it has no SVD. Check "
                             "the training that produced it (a diverged loss?) before converting.")
        u, d, v = matrix_svd(kernel, rank=None if rank is None else max(rank, min_rank))
        full = min(np.shape(kernel))
        r = min(rank if rank is not None else _rank_for(d, tol), full)
        r = max(r, min_rank)
        n_in, n_out = u.shape[0], v.shape[0]
        if r * (n_in + n_out) >= n_in * n_out:
            kept_dense.append(f"{layer.name} (rank {r} ≥ break-even "
                              f"{n_in * n_out / (n_in + n_out):.1f} of {n_in}×{n_out})")
            continue
        r_max = max_rank if max_rank is not None else min(2 * r, full)
        if r_max < r:
            raise ValueError(f"`max_rank` ({r_max}) is below the rank chosen for {layer.name!r} ({r}).")
        plans[id(layer)] = (u[:, :r], d[:r], v[:, :r], r, r_max)
    constrained = [l.name for l in chosen if id(l) in plans and l.kernel_constraint is not None]
    if constrained:
        warnings.warn(
            f"to_low_rank dropped the kernel_constraint of {constrained}: a low-rank kernel is "
            "trained through its factors and takes no kernel constraint (regularizers, the "
            "bias constraint, initializers and activations are carried).", stacklevel=2)
    if kept_dense:
        warnings.warn(
            "to_low_rank left these layers dense: at their rank the factorised layer "
            "(r·(n_in + n_out) parameters) would be larger than the dense one "
            f"(n_in·n_out): {', '.join(kept_dense)}. Use a larger `tol` or a smaller "
            "`rank` to compress them.", stacklevel=2)

    if not plans:  # a conversion that converts nothing says so (the warnings above say why)
        warnings.warn(
            "to_low_rank converted no layer: the model it returns computes what `model` does, with "
            "the same layers. " + ("The layers asked for do not pay at this rank or tol (see above)."
                                   if chosen else "The model has no Dense, Conv1D, Conv2D or EinsumDense "
                                   "layer it converts (the last one stays dense: skip_last=True)."),
            stacklevel=2)

    def clone(layer):
        plan = plans.get(id(layer))
        if plan is None:
            return layer.__class__.from_config(layer.get_config())
        new = _low_rank_clone(layer, plan)
        new._initial_factors = tuple(t.astype("float32") for t in plan[:3])  # built from them
        return new

    def _low_rank_clone(layer, plan):
        _, _, _, r, r_max = plan
        config = layer.get_config()
        common = dict(
            max_rank=r_max, rank=r, min_rank=min(min_rank, r), tol=tol, spectral_weight=spectral_weight,
            activation=config["activation"], name=config["name"],
            bias_initializer=config["bias_initializer"], dtype=config.get("dtype"),
            kernel_regularizer=config.get("kernel_regularizer"),
            bias_regularizer=config.get("bias_regularizer"),
            activity_regularizer=config.get("activity_regularizer"),
            bias_constraint=config.get("bias_constraint"),
        )
        if isinstance(layer, keras.layers.EinsumDense):
            return DynamicLowRankEinsumDense(config["equation"], config["output_shape"],
                                             bias_axes=config["bias_axes"], **common)
        common["use_bias"] = config["use_bias"]
        if isinstance(layer, keras.layers.Dense):
            return DynamicLowRankDense(config["units"], **common)
        kind = DynamicLowRankConv1D if isinstance(layer, keras.layers.Conv1D) else DynamicLowRankConv2D
        return kind(
            config["filters"], config["kernel_size"], strides=config["strides"],
            padding=config["padding"], dilation_rate=config["dilation_rate"], **common,
        )

    converted = keras.models.clone_model(model, clone_function=clone)
    _copy_weights(model, converted, plans, _set_low_rank)
    return converted


def _kernel_matrix(layer):
    """A Dense/Conv/EinsumDense kernel as the n_in × n_out matrix its low-rank form
    factorises (numpy; an EinsumDense kernel with no such form: its last axis
    against the others)."""
    kernel = ops.convert_to_numpy(layer.kernel)
    if isinstance(layer, keras.layers.EinsumDense) and not _unconvertible(layer):
        return einsum_kernel_matrix(layer.equation, kernel)
    return kernel.reshape(-1, kernel.shape[-1])


def _other_kernel_layers(model, kinds):
    """The model's own layers that hold a kernel but are no class ``to_low_rank``
    converts (e.g. Xception's SeparableConv2D, MobileNet's DepthwiseConv2D, a
    subclass of Dense), grouped by class: "Class ×n (first names…; why)"."""
    by_class = {}
    for layer in direct_sublayers(model):
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


def _unconvertible(layer):
    """Why a layer has no low-rank form here ("" if it has one)."""
    if isinstance(layer, keras.layers.EinsumDense):
        try:
            _einsum_plan(layer.equation)
        except ValueError:
            return f"equation {layer.equation!r} (its kernel is no single matrix)"
        return ""
    if not isinstance(layer, _CONVS):
        return ""
    if layer.padding == "causal":
        return "padding='causal'"
    if layer.groups != 1:
        return f"groups={layer.groups}"
    if layer.data_format != "channels_last":
        return f"data_format={layer.data_format!r}"
    return ""


def _set_low_rank(old, new, plan):
    u, d, v, _, _ = plan
    new.set_factors(u.astype("float32"), d.astype("float32"), v.astype("float32"))
    if getattr(old, "bias", None) is not None:
        new.bias.assign(ops.convert_to_numpy(old.bias))  # a copy: JAX donates buffers


def _pairs(old_model, new_model):
    old_layers = direct_sublayers(old_model)
    new_layers = direct_sublayers(new_model)
    if len(old_layers) != len(new_layers):
        raise RuntimeError("the cloned model's layers do not match the original's")
    return zip(old_layers, new_layers)


def _positions(layer):
    """Positions a Dense layer is applied at per sample: the product of its input's
    axes between batch and features (1 for a (batch, features) input, h·w for a
    (batch, h, w, c) map), from the shape it was built with."""
    shape = build_input_shape(layer)
    if shape is None or len(shape) <= 2:
        return 1
    return int(np.prod([d for d in shape[1:-1] if d is not None]))


def _copy_weights(old_model, new_model, plans, set_converted):
    for old, new in _pairs(old_model, new_model):
        if id(old) in plans:
            set_converted(old, new, plans[id(old)])
        elif old.weights:
            new.set_weights(old.get_weights())


# -- export --------------------------------------------------------------------
def compressed_model(model):
    """The model rebuilt at exact ranks from Keras' built-in layers: each dynamic
    low-rank layer becomes a two-layer Sequential (x U_r, then (S_r V_rᵀ) + b with
    the activation), so nothing of keras_lowrank is needed to load or run it.

    Args:
        model: a Sequential or functional model with dynamic low-rank layers.

    Returns:
        a new Keras model of built-in layers, computing what ``model`` computes.

    Examples:

        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> plain = compressed_model(small)
        >>> plain.count_params() == compression_summary(small).total["model_exported_params"]
        True
    """
    _check_clonable(model)
    unfinished = _unfinished_cycle(model)
    if unfinished is not None:
        warnings.warn(
            f"The DLRT optimizer stopped at step {unfinished[0] % unfinished[1]} of a "
            f"{unfinished[1]}-step cycle: the layers hold augmented bases (up to twice "
            "their rank). Call keras_lowrank.compression.truncate_ranks(model) first to "
            "export at the truncated ranks.", stacklevel=2)
    plans = {id(l): l.factors() for l in direct_sublayers(model)
             if isinstance(l, DynamicLowRankBase)}
    plans.update({id(l): _projection_plan(l) for l in direct_sublayers(model)
                  if isinstance(l, LowRankProjection)})

    def clone(layer):
        if id(layer) not in plans:
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, LowRankProjection):
            return _projection_as_keras(layer)
        r = plans[id(layer)][0].shape[1]
        act = keras.activations.serialize(layer.activation)
        if isinstance(layer, DynamicLowRankEinsumDense):
            parts = layer.exported_layers(r)
        elif isinstance(layer, DynamicLowRankDense):
            parts = [keras.layers.Dense(r, use_bias=False, name=f"{layer.name}_u"),
                     keras.layers.Dense(layer.units, activation=act, use_bias=layer.use_bias,
                                        name=f"{layer.name}_sv")]
        else:
            conv = layer.keras_class  # Conv1D or Conv2D
            parts = [conv(r, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                          dilation_rate=layer.dilation_rate, use_bias=False, name=f"{layer.name}_u"),
                     conv(layer.filters, 1, activation=act, use_bias=layer.use_bias, name=f"{layer.name}_sv")]
        return keras.Sequential(parts, name=layer.name)

    compact = keras.models.clone_model(model, clone_function=clone)
    config = model.get_compile_config() if model.compiled else None
    if config is not None:
        # Keep the compile settings (a fresh optimizer) but not the DLRT wrapper,
        # which only training needs and which would make the file unloadable
        # without keras_lowrank. compile() rather than compile_from_config(),
        # which would build the optimizer: its zero slots would triple the saved file.
        inner = getattr(model.optimizer, "inner_optimizer", None)
        if inner is not None:
            config["optimizer"] = keras.optimizers.serialize(inner.__class__.from_config(inner.get_config()))
        compact.compile(**keras.saving.deserialize_keras_object(config))

    def set_parts(old, new, factors):
        if isinstance(old, LowRankProjection):
            if factors is not None:
                dense = next(l for l in new.layers if isinstance(l, keras.layers.Dense))
                dense.set_weights(list(factors))
            return
        u, s, v = factors
        first, second = new.layers
        first.kernel.assign(u.reshape(first.kernel.shape))
        second.kernel.assign((s @ v.T).reshape(second.kernel.shape))
        if old.use_bias:
            second.bias.assign(ops.convert_to_numpy(old.bias))  # a copy: JAX donates buffers

    _copy_weights(model, compact, plans, set_parts)
    return compact


def _projection_plan(layer):
    """A LowRankProjection at inference as the weights of one Dense layer:
    Wᵀ(a + b) − b = a W + (b W − b) ("projection" mode); None for the default
    "input" mode, whose output is its input."""
    if layer.output_mode == "input":
        return None
    w = ops.convert_to_numpy(layer.projection_matrix).astype("float64")
    b = ops.convert_to_numpy(layer.bias).astype("float64")
    return w.astype("float32"), (b @ w - b).astype("float32")


def _projection_as_keras(layer):
    """Keras' own layers computing what ``layer`` computes at inference: an
    Identity in "input" mode (its losses act in training only), else a Dense on
    the features (flattened and reshaped back when ``flatten`` spans several axes)."""
    if layer.output_mode == "input":
        return keras.layers.Identity(name=layer.name)
    dense = keras.layers.Dense(layer.features, name=f"{layer.name}_w")
    shape = tuple(build_input_shape(layer))[1:]
    if not layer.flatten or len(shape) == 1:
        return keras.Sequential([dense], name=layer.name)
    return keras.Sequential([keras.layers.Flatten(), dense, keras.layers.Reshape(shape)], name=layer.name)


def export_compressed(model, path, formats=("keras", "saved_model"), overwrite=False):
    """Writes the exact-rank model (``compressed_model``) under directory ``path``:
    ``model.keras`` and/or ``saved_model/`` (``Model.export``, loadable with plain
    ``tf.saved_model.load``) and/or ``model.tflite``. Returns
    {"model": compressed model, format: file path}. The SavedModel and TFLite
    formats need TensorFlow installed.

    The files are written to a temporary folder that replaces ``path`` only when
    all are written: an interrupted export leaves ``path`` as it was. An
    existing non-empty ``path`` raises FileExistsError unless ``overwrite=True``,
    which replaces the folder whole (no stale files of an earlier export stay) —
    only a folder that an earlier export or command wrote (its manifest lists
    everything in it): a folder holding other files, e.g. your project's, is
    refused with their names, and a symbolic link is never followed or replaced.

    Args:
        model: a Sequential or functional model with dynamic low-rank layers.
        path: the output folder (new or empty unless ``overwrite``).
        formats: any of ``"keras"``, ``"saved_model"``, ``"tflite"``.
        overwrite: replace a non-empty ``path`` that an earlier export wrote.

    Returns:
        {"model": the compressed model, format: path of the file written}.

    Examples:

        >>> import tempfile
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> folder = tempfile.mkdtemp()
        >>> written = export_compressed(small, folder + "/out", formats="keras")
        >>> os.path.basename(written["keras"])
        'model.keras'
    """
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise ValueError(f"`formats` must be a non-empty subset of {_FORMATS}, got {formats!r}.")
    check_output_folder(path, overwrite, "path")
    compact = compressed_model(model)
    written = {"model": compact}
    names = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite"}
    with staged_folder(path, overwrite, "path") as staging:
        if "keras" in formats:
            compact.save(os.path.join(staging, names["keras"]))
        # TFLite converts from a SavedModel: one asked for is written in place, else in a
        # scratch folder removed after (formats=("tflite",) writes model.tflite alone)
        scratch = None if "saved_model" in formats else tempfile.mkdtemp(prefix="klr-saved-model-")
        saved = os.path.join(scratch or staging, names["saved_model"])
        try:
            if "saved_model" in formats or "tflite" in formats:
                compact.export(saved, format="tf_saved_model", verbose=False)
            if "tflite" in formats:
                import tensorflow as tf

                converter = tf.lite.TFLiteConverter.from_saved_model(saved)
                with open(os.path.join(staging, names["tflite"]), "wb") as handle:
                    handle.write(converter.convert())
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    for kind in ("keras", "saved_model", "tflite"):
        if os.path.exists(os.path.join(path, names[kind])):
            written[kind] = os.path.join(path, names[kind])
    return written
