"""Callbacks for dynamic low-rank layers (METHODS.md §2).

- ``RankTruncation``: truncates each layer's rank by its ``tol`` on a schedule, for
  users who train U, S, V with an ordinary optimizer instead of
  ``keras_lowrank.optimizers.DLRT`` (which truncates inside the train step).
- ``SpectralConditioning``: the CondLR projection (Savostianova et al. 2023),
  clamping each layer's singular values so that cond(S) ≤ κ.
- ``LowRankMonitor``: writes each layer's rank and cond(S) and the compression
  rate into ``logs``, so History, CSVLogger and TensorBoard record them.

The first two assign variables between steps, in eager mode; on JAX they sync the
trainer's state first (``model.jax_state_sync``), so they see and change the
current values.
"""

import keras
import numpy as np
from keras import ops

from keras_lowrank.layers import factorization
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase


def low_rank_layers(model):
    """The dynamic low-rank layers of a model (nested models included)."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, DynamicLowRankBase)]


def optimizer_slots(optimizer, variable):
    """The optimizer variables Keras derived from ``variable`` (moments, momenta):
    ``add_variable_from_reference`` names them ``{variable.path with _}_{slot}``."""
    if optimizer is None:
        return []
    inner = getattr(optimizer, "inner_optimizer", None)
    candidates = inner.variables if inner is not None else optimizer.variables
    prefix = variable.path.replace("/", "_") + "_"
    return [
        slot for slot in candidates
        if slot.name.startswith(prefix) and tuple(slot.shape) == tuple(variable.shape)
    ]


def _check_frequency(frequency):
    if frequency == "epoch":
        return frequency
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"`frequency` must be 'epoch' or a positive int (batches), got {frequency!r}.")
    return frequency


class _FactorCallback(keras.callbacks.Callback):
    """Applies ``_update(layer)`` each epoch or every ``frequency`` batches."""

    def __init__(self, frequency="epoch"):
        super().__init__()
        self.frequency = _check_frequency(frequency)
        self._batches = 0

    def _apply(self):
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        for layer in low_rank_layers(self.model):
            values = [ops.convert_to_tensor(v) for v in (layer.u, layer.s, layer.v)]
            if not all(bool(np.all(np.isfinite(ops.convert_to_numpy(t)))) for t in values):
                raise FloatingPointError(
                    f"{type(self).__name__}: layer {layer.name!r} has non-finite factors; "
                    "not changing them (the loss diverged — lower the learning rate)."
                )
            new = self._update(layer, *values)
            for variable, value in zip((layer.u, layer.s, layer.v), new):
                variable.assign(value)
            for variable in (layer.u, layer.s, layer.v):  # moments of an old basis
                for slot in optimizer_slots(getattr(self.model, "optimizer", None), variable):
                    slot.assign(ops.zeros_like(slot.value))

    def on_train_batch_end(self, batch, logs=None):
        if self.frequency != "epoch":
            self._batches += 1
            if self._batches % self.frequency == 0:
                self._apply()

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency == "epoch":
            self._apply()


class RankTruncation(_FactorCallback):
    """Re-orthonormalises U, V and truncates each dynamic low-rank layer to the
    fewest singular values with ‖d[r:]‖ < tol·‖d‖ (the layer's ``tol`` and
    ``min_rank``), each epoch (default) or every ``frequency`` batches. The
    optimizer's moments of the layer's factors are reset (their basis changed).
    Raises FloatingPointError instead of truncating non-finite factors.
    """

    def _update(self, layer, u, s, v):
        u, s, v = factorization.orthonormalize(u, s, v)
        return factorization.truncate(u, s, v, layer.tol, layer.min_rank)


class SpectralConditioning(_FactorCallback):
    """CondLR projection: clamps the singular values of each layer's S_r to
    [s̄(1 − t), s̄(1 + t)], t = (κ − 1)/(κ + 1), so that cond(S_r) ≤ κ (kappa)."""

    def __init__(self, kappa=1.5, frequency="epoch"):
        super().__init__(frequency)
        if not float(kappa) >= 1.0:
            raise ValueError(f"`kappa` must be ≥ 1, got {kappa!r}.")
        self.kappa = float(kappa)

    def _update(self, layer, u, s, v):
        return u, factorization.condition(s, factorization.active_rank(u), self.kappa), v


def condition_number(layer):
    """cond(S_r) = σ_max / σ_min of the active block (= cond(W), U and V orthonormal)."""
    _, s, _ = layer.factors()
    d = np.linalg.svd(s, compute_uv=False)
    return float(d[0] / d[-1]) if d[-1] > 0 else float("inf")


class LowRankMonitor(keras.callbacks.Callback):
    """Adds ``{layer}/rank``, ``{layer}/cond`` and ``compression_rate`` to the epoch
    logs (put it before callbacks that read logs; History, the progress bar and
    CSVLogger already come after user callbacks)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        from keras_lowrank.compression import compression_summary

        summary = compression_summary(self.model)
        for row in summary.rows:
            if row["rank"] is not None:
                logs[f"{row['layer']}/rank"] = row["rank"]
                logs[f"{row['layer']}/cond"] = row["cond"]
        logs["compression_rate"] = summary.total["compression_rate"]
