"""The form each dynamic low-rank layer is exported in, chosen by size or by speed.

A layer of kernel W = U_r S_r V_rᵀ (n_in × n_out) has two exact forms made of Keras' own
layers:

- ``"factors"``: the pair x ↦ x U_r, then (S_r V_rᵀ) + b with the activation — r(n_in + n_out)
  weights (a convolution: a k×k convolution to r channels, then a 1×1 one);
- ``"dense"``: the layer's Keras class (``Dense``, ``Conv2D``, ``EinsumDense``…) with W
  multiplied back — n_in·n_out weights, one kernel call.

The pair is smaller below the break-even rank n_in·n_out / (n_in + n_out), but two calls
of thin kernels are not always faster than one call of a full one: at small sizes a
backend's per-call cost dominates, and a GPU runs a full kernel at the same speed as a
thin one until it is compute-bound. ``prefer="size"`` keeps the form with fewer weights;
``prefer="speed"`` times both forms on this backend and device, each on the inputs the
layer sees in the model (``data``) or random ones of its built shape, and keeps the
faster — measured, since no rule of thumb holds across backends and devices (see
docs/benchmarks.md). No form is larger than the layer the model was converted from, so
the exported model is never larger than the dense one.
"""

import time

import keras
import numpy as np
from keras import ops

from keras_lowrank._keras_compat import build_input_shape, layer_paths
from keras_lowrank.analysis._batches import iterate_inputs
from keras_lowrank.compression.calibration import inputs_seen
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase

FORMS = ("factors", "dense")
PREFER = ("size", "speed")
#: "speed" keeps the dense form only when it is faster by more than this share (and the
#: pair likewise): closer than that, timings on a shared machine cannot tell the forms
#: apart, and the one with fewer weights is kept
SPEED_MARGIN = 0.1
#: batch of the random inputs a layer is timed on where no ``data`` is given
TIMING_BATCH = 32

__all__ = ["time_export_forms", "export_forms", "FORMS", "PREFER"]


def parameter_counts(layer):
    """{"factors": r(n_in + n_out) + bias, "dense": n_in·n_out + bias} of ``layer`` at its rank."""
    bias = int(np.prod(layer.bias.shape)) if layer.bias is not None else 0
    return {"factors": layer.rank * (layer.n_in + layer.n_out) + bias, "dense": layer.n_in * layer.n_out + bias}


def keras_form(layer, form, input_shape):
    """Keras' own layer(s) computing ``layer`` in ``form``, built on ``input_shape`` and
    set: a Sequential of the factor pair for ``"factors"``, the layer's Keras class for
    ``"dense"``, named as ``layer``."""
    if form == "dense":
        new = layer.exported_dense_layer()
        new.build(input_shape)
        new.kernel.assign(ops.convert_to_numpy(layer.kernel))  # padding beyond the rank is zero
        if layer.bias is not None:
            new.bias.assign(ops.convert_to_numpy(layer.bias))  # a copy: JAX donates buffers
        return new
    u, s, v = layer.factors()
    new = keras.Sequential(layer.exported_layers(u.shape[1]), name=layer.name)
    new.build(input_shape)
    first, second = new.layers
    first.kernel.assign(u.reshape(first.kernel.shape))
    second.kernel.assign((s @ v.T).reshape(second.kernel.shape))
    if layer.bias is not None:
        second.bias.assign(ops.convert_to_numpy(layer.bias))
    return new


def low_rank_paths(model):
    """[(path, layer)] of ``model``'s dynamic low-rank layers, at any depth."""
    return [(path, layer) for path, layer in layer_paths(model) if isinstance(layer, DynamicLowRankBase)]


def time_export_forms(model, data=None, rounds=5):
    """Both exported forms of each dynamic low-rank layer of ``model``, timed.

    Each form runs alone (a one-layer Keras model, ``predict_on_batch``: Keras' compiled
    inference on this backend and device) on the inputs its layer receives when
    ``model`` runs on the first batch of ``data``, or on random inputs of the layer's
    built shape with a batch of 32; after two warm-up calls, ``rounds`` rounds of ≥ 20 ms
    each, the two forms alternating; the median per call.

    Args:
        model: a Keras model with dynamic low-rank layers (at any depth).
        data: inputs of ``model`` to time the layers on (an array, a dict of arrays, an
            (x, y) pair, a tf.data.Dataset or PyDataset: its first batch, as batched);
            needed where a layer's input has an axis besides the batch of unknown size
            (keras-hub's text models: the sequence length).
        rounds: timed rounds per form (≥ 1).

    Returns:
        {path: {"params": {form: weights}, "seconds": {form: seconds per call},
        "input_shape": the shape timed on}} for each layer, forms ``"factors"`` and ``"dense"``.

    Examples:

        >>> from keras_lowrank.compression import to_low_rank
        >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, name="hidden"),
        ...                           keras.layers.Dense(3)])
        >>> timings = time_export_forms(to_low_rank(model, rank=8, layers=["hidden"]), rounds=1)
        >>> timings["hidden"]["params"]
        {'factors': 1088, 'dense': 4160}
    """
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"`rounds` must be a positive int, got {rounds!r}.")
    targets = low_rank_paths(model)
    inputs = _layer_inputs(model, targets, data)
    return {path: _timed(layer, inputs[path], rounds) for path, layer in targets}


def export_forms(model, prefer="size", data=None):
    """The form ``compressed_model`` writes each dynamic low-rank layer of ``model`` in.

    Args:
        model: a Keras model with dynamic low-rank layers (at any depth).
        prefer: ``"size"`` — the form with fewer weights (the pair unless the rank is at
            or above the break-even n_in·n_out / (n_in + n_out)); ``"speed"`` — the
            faster form by ``time_export_forms`` where they differ by more than 10 %,
            else the smaller; or a mapping {path: form} naming every low-rank layer
            (a choice made on another device, or by hand), checked.
        data: the inputs ``"speed"`` times the layers on, as in ``time_export_forms``.

    Returns:
        ({path: "factors" or "dense"}, the timings behind a ``"speed"`` choice — None
        for the others).

    Examples:

        >>> from keras_lowrank.layers import DynamicLowRankDense
        >>> model = keras.Sequential([keras.Input((32,)),
        ...                           DynamicLowRankDense(32, max_rank=24, rank=20, name="past"),
        ...                           DynamicLowRankDense(32, max_rank=8, rank=4, name="below")])
        >>> export_forms(model)[0]  # rank 20 ≥ break-even 32·32/64 = 16
        {'past': 'dense', 'below': 'factors'}
    """
    targets = low_rank_paths(model)
    if isinstance(prefer, dict):
        paths = [path for path, _ in targets]
        unknown = sorted(set(prefer) - set(paths))
        missing = [path for path in paths if path not in prefer]
        bad = {path: form for path, form in prefer.items() if form not in FORMS}
        if unknown or missing or bad:
            raise ValueError(
                f"`prefer` as a mapping must give each dynamic low-rank layer's path a form in {FORMS}; "
                + "; ".join(part for part in (
                    f"not low-rank layers of the model: {unknown}" if unknown else "",
                    f"missing: {missing}" if missing else "",
                    f"unknown forms: {bad}" if bad else "") if part)
                + f". The model's low-rank layers: {paths}.")
        return dict(prefer), None
    if prefer not in PREFER:
        raise ValueError(f'`prefer` must be "size", "speed" or a mapping {{layer path: form}}, got {prefer!r}.')
    if prefer == "size":
        return {path: _smaller(parameter_counts(layer)) for path, layer in targets}, None
    timings = time_export_forms(model, data)
    forms = {}
    for path, timing in timings.items():
        factors, dense = timing["seconds"]["factors"], timing["seconds"]["dense"]
        if dense < (1 - SPEED_MARGIN) * factors:
            forms[path] = "dense"
        elif factors < (1 - SPEED_MARGIN) * dense:
            forms[path] = "factors"
        else:
            forms[path] = _smaller(timing["params"])
    return forms, timings


def _smaller(params):
    return "dense" if params["dense"] < params["factors"] else "factors"


def _layer_inputs(model, targets, data):
    """{path: an input batch (numpy)} per target layer: what it receives when ``model``
    runs on the first batch of ``data`` (its first call), or random normal inputs of
    its built shape with a batch of ``TIMING_BATCH``."""
    if data is None:
        rng = np.random.default_rng(0)
        inputs = {}
        for path, layer in targets:
            shape = build_input_shape(layer)
            if shape is None or any(d is None for d in tuple(shape)[1:]):
                raise ValueError(
                    f"Layer {path!r} takes inputs of shape {shape} (an axis besides the batch of unknown "
                    "size): pass `data` (inputs of the model) to time it on what it really receives.")
            inputs[path] = rng.normal(size=(TIMING_BATCH, *tuple(shape)[1:])).astype(layer.compute_dtype)
        return inputs
    batch = next(iter(iterate_inputs(data, batch_size=TIMING_BATCH)), None)
    if batch is None:
        raise ValueError("`data` holds no examples to time the layers on.")
    first = {}
    with inputs_seen([layer for _, layer in targets], lambda layer, x: first.setdefault(id(layer), x)):
        model(batch, training=False)
    seen = {path: first[id(layer)] for path, layer in targets if id(layer) in first}
    unseen = [path for path, _ in targets if path not in seen]
    if unseen:
        raise ValueError(f"These low-rank layers were not called when the model ran on `data`: {unseen}; "
                         "their speed cannot be measured on it.")
    return seen


def _timed(layer, x, rounds):
    """{"params", "seconds", "input_shape"} of ``layer``'s two forms on input batch ``x``."""
    runners = {}
    for form in FORMS:
        built = keras_form(layer, form, (None, *x.shape[1:]))
        inputs = keras.Input(x.shape[1:], dtype=x.dtype)
        runner = keras.Model(inputs, built(inputs))
        for _ in range(2):  # compiles
            runner.predict_on_batch(x)
        runners[form] = runner
    calls = {}
    for form, runner in runners.items():
        start = time.perf_counter()
        runner.predict_on_batch(x)
        once = max(time.perf_counter() - start, 1e-6)
        calls[form] = int(min(200, max(1, np.ceil(0.02 / once))))
    samples = {form: [] for form in FORMS}
    for _ in range(rounds):
        for form, runner in runners.items():
            start = time.perf_counter()
            for _ in range(calls[form]):
                runner.predict_on_batch(x)
            samples[form].append((time.perf_counter() - start) / calls[form])
    return {"params": parameter_counts(layer), "seconds": {form: float(np.median(samples[form])) for form in FORMS},
            "input_shape": tuple(x.shape)}
