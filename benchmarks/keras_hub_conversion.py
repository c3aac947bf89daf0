"""keras-hub models through the library, in one run on the backend given by KERAS_BACKEND:

1. the nine tiny models of tests/keras_hub_models.py (BERT, GPT-2, Llama, Gemma, ViT,
   backbones and tasks): the share of their non-embedding Dense/EinsumDense/Conv kernels
   ``to_low_rank(rank=8)`` converts, parameters before / converted / exported, and the
   exported ``.keras`` file reloaded (``keras.saving.load_model``) against the converted
   model (largest |difference| relative to the largest output);
2. the step time of the example's language model (GPT2CausalLM, 4 layers, width 160,
   batch 16 × 128 bytes) converted at budget 0.5 and trained with DLRT, against the dense
   model's AdamW step, both measured here (median of timed steps after warm-up; the
   first ``fit`` call too).

    KERAS_BACKEND=tensorflow python benchmarks/keras_hub_conversion.py [--steps 30]
"""

import argparse
import os
import sys
import tempfile
import time

import keras
import keras_hub
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from keras_hub_models import NAMES, inputs, main_output, make  # noqa: E402

from keras_lowrank import DLRT, compression  # noqa: E402
from keras_lowrank._keras_compat import layer_paths  # noqa: E402
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30, help="timed training steps per model")
args = parser.parse_args()
KERNELS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2D)

print(f"backend {keras.backend.backend()}, keras {keras.__version__}, keras-hub {keras_hub.__version__}")
print("| model | kernels converted | parameters: dense → converted → exported | reloaded .keras vs converted |")
print("|---|---|---|---|")
for name in NAMES:
    model = make(name)
    batch = inputs(model)
    low = compression.to_low_rank(model, rank=8)
    kernels = [p for p, l in layer_paths(model) if type(l) in KERNELS]
    done = [p for p, l in layer_paths(low) if isinstance(l, DynamicLowRankBase)]
    with tempfile.TemporaryDirectory() as folder:
        written = compression.export_compressed(low, os.path.join(folder, "out"), formats="keras")
        reloaded = keras.saving.load_model(written["keras"])
        expected = np.asarray(keras.ops.convert_to_numpy(main_output(low(batch, training=False))))
        got = np.asarray(keras.ops.convert_to_numpy(main_output(reloaded(batch, training=False))))
    error = np.abs(got - expected).max() / np.abs(expected).max()
    print(f"| {name} | {len(done)}/{len(kernels)} ({len(done) / len(kernels):.0%}) | {model.count_params():,} → "
          f"{low.count_params():,} → {written['model'].count_params():,} | {error:.1e} |")

# -- step time on the example's language model -------------------------------------
rng = np.random.default_rng(0)
WINDOW, BATCH = 128, 16
keras.utils.set_random_seed(0)
lm = keras_hub.models.GPT2CausalLM(
    backbone=keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=4, num_heads=4, hidden_dim=160,
                                           intermediate_dim=640, max_sequence_length=WINDOW, dropout=0.0),
    preprocessor=None)
ids = rng.integers(0, 256, size=(BATCH * (args.steps + 6), WINDOW + 1)).astype("int32")
x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((len(ids), WINDOW), "int32")}
y = ids[:, 1:]
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
calibration = {k: v[:256] for k, v in x.items()}
low = compression.to_low_rank(lm, budget=0.5, data=calibration)


class Timer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []


def measure(model, optimizer):
    model.compile(optimizer=optimizer, loss=loss)
    timer = Timer()
    start = time.perf_counter()
    model.fit({k: v[:BATCH] for k, v in x.items()}, y[:BATCH], batch_size=BATCH, epochs=1, verbose=0)
    first = time.perf_counter() - start
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[timer])
    return first, float(np.median(timer.times[5:]))


dense_first, dense_step = measure(lm, keras.optimizers.AdamW(1e-4))
low_first, low_step = measure(low, DLRT(keras.optimizers.AdamW(1e-4), steps_per_cycle=20))
print(f"\nGPT-2 LM (4 layers, width 160, batch {BATCH}×{WINDOW}), converted at budget 0.5: "
      f"{lm.count_params():,} → {compression.compression_summary(low).total['model_exported_params']:,} exported "
      f"parameters")
print(f"first fit call: dense AdamW {dense_first:.1f} s, DLRT {low_first:.1f} s ({low_first / dense_first:.2f}×)")
print(f"steady step (median of {args.steps - 5}): dense AdamW {dense_step * 1e3:.0f} ms, DLRT {low_step * 1e3:.0f} ms "
      f"({low_step / dense_step:.2f}×)")
