"""A small GPT-2 from keras-hub, trained here on text that ships with the library,
compressed to half the parameters of its attention and feed-forward kernels, fine-tuned
with DLRT, generated from and exported.

The text is the library's own source code (keras_lowrank/**/*.py, Apache-2.0, read from
the installed package: no download), as bytes (a vocabulary of 256). Whole files are held
out for validation: every fifth file in sorted order.

A causal language model (keras_hub.models.GPT2CausalLM, 4 layers, width 160, ~1.3 M
parameters) trained on 128-byte windows. ``to_low_rank(budget=0.5, data=…)`` converts
every attention projection (query/key/value/output EinsumDense inside keras-hub's
CachedMultiHeadAttention) and feed-forward Dense to low rank, ranks allocated across all
24 kernels for half their parameters, each factorised to keep its outputs on 256
training windows. Validation perplexity dense / right after conversion / after DLRT
fine-tuning; greedy generation from the same prompt before and after; exported sizes.

    python examples/compress_language_model.py           (about 17 minutes on 2 CPU cores)
    python examples/compress_language_model.py --quick   (a tiny run of the same code)
"""

import argparse
import math
import os
import pathlib
import time

import keras
import keras_hub
import numpy as np

import keras_lowrank
from keras_lowrank import DLRT, compression

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="tiny models, a few steps: the pipeline only")
parser.add_argument("--output", default="language_model", help="folder for the exported models")
args = parser.parse_args()

if args.quick:
    LAYERS, WIDTH, HEADS, MLP, WINDOW, STEPS, TUNE, BATCH = 2, 64, 4, 128, 64, 40, 20, 16
else:
    LAYERS, WIDTH, HEADS, MLP, WINDOW, STEPS, TUNE, BATCH = 4, 160, 4, 640, 128, 2000, 400, 16
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)

# -- the corpus: the library's own sources, as bytes ---------------------------------
root = pathlib.Path(keras_lowrank.__file__).parent
files = sorted(p for p in root.rglob("*.py"))
held_out = set(files[4::5])
train_text = b"\n".join(p.read_bytes() for p in files if p not in held_out)
valid_text = b"\n".join(p.read_bytes() for p in files if p in held_out)
train_ids = np.frombuffer(train_text, np.uint8).astype("int32")
valid_ids = np.frombuffer(valid_text, np.uint8).astype("int32")
print(f"corpus: {len(files)} source files of keras_lowrank (Apache-2.0), {len(train_ids):,} training bytes, "
      f"{len(valid_ids):,} validation bytes in {len(held_out)} held-out files")


def windows(ids, count=None, starts=None):
    """``count`` random (or the given) windows of WINDOW + 1 bytes: inputs and next bytes."""
    if starts is None:
        starts = rng.integers(0, len(ids) - WINDOW - 1, size=count)
    block = np.stack([ids[s: s + WINDOW + 1] for s in starts])
    x = {"token_ids": block[:, :-1], "padding_mask": np.ones((len(block), WINDOW), "int32")}
    return x, block[:, 1:]


# non-overlapping validation windows, the same for every model
valid_x, valid_y = windows(valid_ids, starts=np.arange(0, len(valid_ids) - WINDOW - 1, WINDOW)[:256 if args.quick
                                                                                               else 2048])
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def perplexity(model):
    logits = model.predict(valid_x, batch_size=64, verbose=0)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, valid_y[..., None], -1).mean()
    return math.exp(nll)


def train(model, optimizer, steps, label):
    model.compile(optimizer=optimizer, loss=loss)
    x, y = windows(train_ids, steps * BATCH)
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    print(f"{label}: {steps} steps of {BATCH} windows in {seconds:.0f} s, last loss {history.history['loss'][-1]:.3f}")


def generate(model, prompt=b"def to_low_rank(model"):
    ids = np.zeros((1, WINDOW), "int32")
    mask = np.zeros((1, WINDOW), "int32")
    ids[0, : len(prompt)] = np.frombuffer(prompt, np.uint8)
    mask[0, : len(prompt)] = 1
    model.compile(sampler="greedy")
    out = model.generate({"token_ids": ids, "padding_mask": mask}, max_length=len(prompt) + 48,
                         stop_token_ids=None)
    return bytes(out["token_ids"][0, : len(prompt) + 48].astype("uint8")).decode("utf-8", "replace")


# -- the language model --------------------------------------------------------------
backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=LAYERS, num_heads=HEADS, hidden_dim=WIDTH,
                                         intermediate_dim=MLP, max_sequence_length=WINDOW, dropout=0.0)
lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
train(lm, keras.optimizers.AdamW(3e-4 if not args.quick else 1e-3, weight_decay=0.01), STEPS, "dense training")
dense_ppl = perplexity(lm)
sample_dense = generate(lm)

calibration, _ = windows(train_ids, 256)
low = compression.to_low_rank(lm, budget=0.5, data=calibration)
summary = compression.compression_summary(low)
converted = [r for r in summary.rows if r["rank"] is not None]
dense_kernels, low_kernels = summary.total["dense_params"], summary.total["low_rank_params"]
print(f"converted {len(converted)} kernels: {dense_kernels:,} → {low_kernels:,} parameters "
      f"({low_kernels / dense_kernels:.1%}); model {lm.count_params():,} → {summary.total['model_exported_params']:,}")
converted_ppl = perplexity(low)
train(low, DLRT(keras.optimizers.AdamW(1e-4 if not args.quick else 1e-3, weight_decay=0.01), steps_per_cycle=20),
      TUNE, "DLRT fine-tuning")
compression.truncate_ranks(low)
tuned_ppl = perplexity(low)
sample_low = generate(low)
print(f"validation perplexity (bytes): dense {dense_ppl:.3f}; right after conversion {converted_ppl:.3f}; "
      f"after DLRT fine-tuning {tuned_ppl:.3f} ({tuned_ppl / dense_ppl:.3f}× dense)")
print(f"greedy sample, dense:      {sample_dense!r}")
print(f"greedy sample, compressed: {sample_low!r}")

os.makedirs(args.output, exist_ok=True)
formats = ("keras", "saved_model") if keras.backend.backend() == "tensorflow" else ("keras",)
dense_file = os.path.join(args.output, "dense_lm.keras")
lm.save(dense_file)
written = compression.export_compressed(low, os.path.join(args.output, "compressed_lm"), formats=formats,
                                        overwrite=True)
reloaded = keras.saving.load_model(written["keras"])
print(f"files: dense .keras {os.path.getsize(dense_file) / 1e6:.2f} MB, compressed .keras "
      f"{os.path.getsize(written['keras']) / 1e6:.2f} MB; the reloaded file's perplexity {perplexity(reloaded):.3f}")
