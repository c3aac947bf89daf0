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

from keras_lowrank._validation import check_int, check_number

from keras_lowrank.layers import factorization
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
from keras_lowrank.optimizer_slots import optimizer_slots, slot_kind


def low_rank_layers(model):
    """The dynamic low-rank layers of a model (nested models included)."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, DynamicLowRankBase)]


def _check_frequency(frequency):
    if frequency == "epoch":
        return frequency
    if isinstance(frequency, str):
        raise ValueError(f"`frequency` must be 'epoch' or a positive int (batches), got {frequency!r}.")
    return check_int(frequency, "frequency ('epoch' or batches)")


def dlrt_of(optimizer):
    """The DLRT optimizer ``optimizer`` is or wraps (LossScaleOptimizer(DLRT(…))), or None."""
    while optimizer is not None:
        if hasattr(optimizer, "cycle_step") and hasattr(optimizer, "steps_per_cycle"):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


class _FactorCallback(keras.callbacks.Callback):
    """Applies ``_update(layer)`` each epoch or every ``frequency`` batches.

    Under the DLRT optimizer a due update waits for the end of the running
    cycle: mid-cycle the layers hold augmented bases whose new directions have
    near-zero singular values (a conditioning would clamp them up to the mean,
    moving W by tens of percent, and a truncation would undo the augmentation).
    """

    def __init__(self, frequency="epoch"):
        super().__init__()
        self.frequency = _check_frequency(frequency)
        self._batches = 0
        self._pending = False

    def _sync(self):
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()

    def _mid_cycle(self):
        dlrt = dlrt_of(getattr(self.model, "optimizer", None))
        if dlrt is None or not dlrt.built:
            return False
        return int(ops.convert_to_numpy(dlrt.cycle_step)) % dlrt.steps_per_cycle != 0

    def _apply_when_due(self):
        self._sync()
        if self._mid_cycle():
            self._pending = True
            return
        self._pending = False
        self._apply()

    def _apply(self):
        self._sync()
        for layer in low_rank_layers(self.model):
            values = [ops.convert_to_tensor(v) for v in (layer.u, layer.s, layer.v)]
            if not all(bool(np.all(np.isfinite(ops.convert_to_numpy(t)))) for t in values):
                raise FloatingPointError(
                    f"{type(self).__name__}: layer {layer.name!r} has non-finite factors; "
                    "not changing them (the loss diverged — lower the learning rate)."
                )
            new = self._update(layer, *values)
            self._carry_moments(getattr(self.model, "optimizer", None), layer, values, new)
            for variable, value in zip((layer.u, layer.s, layer.v), new):
                variable.assign(value)

    def _carry_moments(self, optimizer, layer, old, new):
        """Keeps the optimizer's slots, as Keras' own weight constraints (also
        projections between steps) do."""

    def on_train_batch_end(self, batch, logs=None):
        if self.frequency != "epoch":
            self._batches += 1
            if self._batches % self.frequency == 0:
                self._apply_when_due()
                return
        if self._pending:
            self._apply_when_due()

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency == "epoch":
            self._apply_when_due()

    def on_train_end(self, logs=None):
        if self._pending:  # DLRT finished the cycle when fit ended
            self._apply_when_due()


class RankTruncation(_FactorCallback):
    """Re-orthonormalises U, V and truncates each dynamic low-rank layer to the
    fewest singular values with ‖d[r:]‖ < tol·‖d‖ (the layer's ``tol`` and
    ``min_rank``), each epoch (default) or every ``frequency`` batches. The
    optimizer's slots of the factors move into the new bases, as gradients do
    (exact where the truncated singular values are zero; see ``_carry_moments``).
    Raises FloatingPointError instead of truncating non-finite factors.
    """

    def _update(self, layer, u, s, v):
        u, s, v = factorization.orthonormalize(u, s, v)
        return factorization.truncate(u, s, v, layer.tol, layer.min_rank)

    def _carry_moments(self, optimizer, layer, old, new):
        """Slots transformed as the gradients they average (G = ∂L/∂W, W kept):
        ∇U' = G Wᵀ U' = ∇U Aᵀ, ∇V' = ∇V Bᵀ with A = U'ᵀU, B = V'ᵀV, and, U' lying
        in span(U), ∇S' = U'ᵀ G V' = A (UᵀU)⁺ ∇S (VᵀV)⁺ Bᵀ (A ∇S Bᵀ for orthonormal
        U, V, as in DLRT). Zeroing them instead would, with Keras' bias correction
        by the global step, make the next Adam steps several learning rates long."""
        u0, _, v0 = (ops.convert_to_numpy(t) for t in old)
        a, b = (ops.convert_to_numpy(t) for t in factorization.basis_change(u0, v0, new[0], new[2]))
        a_s = a @ np.linalg.pinv(u0.T @ u0)  # pinv: the zero columns beyond the rank
        b_s = b @ np.linalg.pinv(v0.T @ v0)
        for variable, left, right in ((layer.u, None, a), (layer.s, a_s, b_s), (layer.v, None, b)):
            for slot in optimizer_slots(optimizer, variable):
                kind = slot_kind(slot, variable)
                slot.assign(factorization.carry_slot(slot.value, left, right, kind))


class SpectralConditioning(_FactorCallback):
    """CondLR projection: clamps the singular values of each layer's S_r to
    [s̄(1 − t), s̄(1 + t)], t = (κ − 1)/(κ + 1), so that cond(S_r) ≤ κ (kappa).
    U and V keep their bases, and the optimizer keeps its slots."""

    def __init__(self, kappa=1.5, frequency="epoch"):
        super().__init__(frequency)
        self.kappa = check_number(kappa, "kappa", minimum=1.0)

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
    CSVLogger already come after user callbacks). With the DLRT optimizer an epoch
    can end inside a cycle, where the layers hold augmented bases: the logged rank
    is then up to twice the truncated one (``fit`` finishes the last cycle when it
    ends, so the final model holds the truncated ranks)."""

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
