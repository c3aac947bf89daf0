"""The callbacks (keras_lowrank/callbacks.py): when SpectralConditioning acts within a
DLRT cycle, and callbacks that would do nothing saying so."""

import keras
import numpy as np
import pytest
from keras import ops
from models import low_rank_mlp, separable_data

from keras_lowrank import LowRankWarning, callbacks, compression
from keras_lowrank.optimizers import DLRT

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_spectral_conditioning_waits_for_the_end_of_the_cycle():
    """Mid-cycle the augmented block has near-zero singular values; conditioning
    them lifts them to the mean, moving W by tens of percent and blocking the
    truncation. Each application must come at a cycle end, on the truncated S,
    where cond(S_r) ≤ κ afterwards."""
    x, y = separable_data(n=80)
    model = low_rank_mlp(max_rank=8, rank=2)
    model.compile(DLRT(keras.optimizers.SGD(0.05), steps_per_cycle=4), LOSS)
    applied = []

    class Recorded(callbacks.SpectralConditioning):
        def _apply(self):
            self._sync()
            layer = self.model.get_layer("hidden")
            before = _np(layer.kernel)
            super()._apply()
            change = np.linalg.norm(_np(layer.kernel) - before) / np.linalg.norm(before)
            applied.append((int(_np(self.model.optimizer.cycle_step)) % 4, change,
                            callbacks.condition_number(layer)))

    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[Recorded(kappa=2.0, frequency=3)])
    # 10 steps: due after steps 3, 6, 9 (mid-cycle), applied at 4, 8 and at the end
    assert len(applied) == 3
    for phase, change, cond in applied:
        assert phase == 0
        assert cond <= 2.0 + 1e-4
        assert change < 0.5  # mid-cycle: 0.7 seen


def test_calls_that_would_do_nothing_say_so(rng):
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    dense = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.warns(LowRankWarning, match="converted no layer"):
        compression.to_low_rank(dense, rank=2)
    for callback in (callbacks.RankTruncation(), callbacks.SpectralConditioning(), callbacks.LowRankMonitor()):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        model.compile("sgd", "mse")
        with pytest.warns(LowRankWarning, match=f"{type(callback).__name__} acts on dynamic low-rank layers"):
            model.fit(x, keras.utils.to_categorical(y, 3), epochs=1, verbose=0, callbacks=[callback])
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(DLRT(keras.optimizers.Adam()), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(LowRankWarning, match="DLRT was given a model without dynamic low-rank layers"):
        model.fit(x, y, epochs=1, verbose=0)

