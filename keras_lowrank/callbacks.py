"""Callbacks for dynamic low-rank layers (keras_lowrank/methods.md §2).

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

import warnings

import keras
from keras import ops

from keras_lowrank._low_rank import host_factorization as host
from keras_lowrank._low_rank.model import check_finite, condition_number, dlrt_of, low_rank_layers, truncate_layer
from keras_lowrank._validation import check_int, check_number
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.compression import compression_summary

__all__ = ["RankTruncation", "SpectralConditioning", "LowRankMonitor", "low_rank_layers",
           "condition_number", "dlrt_of"]


def _check_frequency(frequency):
    if frequency == "epoch":
        return frequency
    if isinstance(frequency, str):
        raise ValueError(f"`frequency` must be 'epoch' or a positive int (batches), got {frequency!r}.")
    return check_int(frequency, "frequency ('epoch' or batches)")


def _warn_without_low_rank_layers(callback):
    """A callback given a model it cannot act on says so, once, when training starts."""
    if not low_rank_layers(callback.model):
        warnings.warn(
            f"{type(callback).__name__} acts on dynamic low-rank layers, and the model "
            f"{callback.model.name!r} has none: it will do nothing. Convert the model first "
            "(compression.to_low_rank) or build it from DynamicLowRank* layers.", stacklevel=2, category=LowRankWarning)


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

    def on_train_begin(self, logs=None):
        _warn_without_low_rank_layers(self)
        optimizer = getattr(self.model, "optimizer", None)
        if isinstance(optimizer, keras.optimizers.Adafactor) and low_rank_layers(self.model):
            # Surveyed over every Keras optimizer: plain Adafactor turns S's unused rows
            # and columns (beyond the active rank, gradient 0) into 0·∞ = NaN at the first step.
            raise ValueError(
                f"{type(self).__name__}: the model trains its low-rank factors with plain Adafactor, whose "
                "factored second moments turn S's unused rows and columns into NaN at the first step. "
                "Wrap it in DLRT (optimizer=DLRT(keras.optimizers.Adafactor())) or use another optimizer.")

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

    def _apply(self):  # after _apply_when_due's sync
        optimizer = getattr(self.model, "optimizer", None)
        for layer in low_rank_layers(self.model):
            check_finite(layer, type(self).__name__)
            self._update(layer, optimizer)

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
    (exact where the truncated singular values are zero).
    Raises FloatingPointError instead of truncating non-finite factors.

    Args:
        frequency: ``"epoch"`` (default) or a number of batches.

    Examples:
        singular values (1, 0.01, 0.01) hold 99.98 % of the energy in the
        first, so ``tol=0.1`` keeps rank 1.

        >>> import keras
        >>> import numpy as np
        >>> from keras_lowrank import DynamicLowRankDense
        >>> layer = DynamicLowRankDense(6, max_rank=3, rank=3, tol=0.1)
        >>> model = keras.Sequential([keras.Input((6,)), layer])
        >>> eye = np.eye(6, 3, dtype="float32")
        >>> layer.set_factors(eye, np.diag([1.0, 0.01, 0.01]), eye)
        >>> model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        >>> x = np.ones((4, 6), "float32")
        >>> _ = model.fit(x, x, verbose=0, callbacks=[RankTruncation()])
        >>> layer.rank
        1
    """

    def _update(self, layer, optimizer):
        truncate_layer(layer, optimizer)


class SpectralConditioning(_FactorCallback):
    """CondLR projection: clamps the singular values of each layer's S_r to
    [s̄(1 − t), s̄(1 + t)], t = (κ − 1)/(κ + 1), so that cond(S_r) ≤ κ (kappa).
    U and V keep their bases, and the optimizer keeps its slots.

    Args:
        kappa: the largest condition number allowed (≥ 1).
        frequency: ``"epoch"`` (default) or a number of batches.

    Examples:
        S = diag(4, 1, 1) has mean 2 and κ = 1.5 gives t = 0.2, so the
        singular values are clamped to [1.6, 2.4].

        >>> import keras
        >>> import numpy as np
        >>> from keras_lowrank import DynamicLowRankDense
        >>> layer = DynamicLowRankDense(6, max_rank=3, rank=3, tol=0.1)
        >>> model = keras.Sequential([keras.Input((6,)), layer])
        >>> eye = np.eye(6, 3, dtype="float32")
        >>> layer.set_factors(eye, np.diag([4.0, 1.0, 1.0]), eye)
        >>> model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        >>> x = np.ones((4, 6), "float32")
        >>> _ = model.fit(x, x, verbose=0, callbacks=[SpectralConditioning(kappa=1.5)])
        >>> round(condition_number(layer), 4)
        1.5

    References:
        - Savostianova, Zangrando, Ceruti & Tudisco, "Robust low-rank training via approximate
          orthonormal constraints" (CondLR), NeurIPS 2023: https://arxiv.org/abs/2306.01485
    """

    def __init__(self, kappa=1.5, frequency="epoch"):
        super().__init__(frequency)
        self.kappa = check_number(kappa, "kappa", minimum=1.0)

    def _update(self, layer, optimizer):
        rank = host.active_rank(ops.convert_to_numpy(layer.u))
        host.assign(layer.s, host.condition(ops.convert_to_numpy(layer.s), rank, self.kappa))


class LowRankMonitor(keras.callbacks.Callback):
    """Adds ``{layer}/rank``, ``{layer}/cond`` and ``compression_rate`` to the epoch
    logs (put it before callbacks that read logs; History, the progress bar and
    CSVLogger already come after user callbacks). With the DLRT optimizer an epoch
    can end inside a cycle, where the layers hold augmented bases: the logged rank
    is then up to twice the truncated one (``fit`` finishes the last cycle when it
    ends, so the final model holds the truncated ranks).

    Examples:

        >>> import numpy as np
        >>> from keras_lowrank import DynamicLowRankDense
        >>> model = keras.Sequential([keras.Input((6,)), DynamicLowRankDense(6, max_rank=3, rank=2, name="f")])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> x = np.ones((4, 6), "float32")
        >>> history = model.fit(x, x, verbose=0, callbacks=[LowRankMonitor()])
        >>> history.history["f/rank"], sorted(history.history)
        ([2], ['compression_rate', 'f/cond', 'f/rank', 'loss'])
    """

    def on_train_begin(self, logs=None):
        _warn_without_low_rank_layers(self)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        summary = compression_summary(self.model)
        for row in summary.rows:
            if row["rank"] is not None:
                logs[f"{row['layer']}/rank"] = row["rank"]
                logs[f"{row['layer']}/cond"] = row["cond"]
        logs["compression_rate"] = summary.total["compression_rate"]
