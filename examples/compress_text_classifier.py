"""A keras-hub BERT text classifier, trained here on a text task built offline, compressed
to half the parameters of its attention and feed-forward kernels, fine-tuned with DLRT,
exported and reloaded.

The task: which part of a library a 128-byte snippet of its source code comes from. The
text is keras_lowrank's own source (keras_lowrank/**/*.py, Apache-2.0, read from the
installed package: no download), as bytes (a vocabulary of 256 plus a [CLS] token);
four classes, the subpackages ``analysis``, ``compression``, ``layers`` and
``robustness``. Whole files are held out for the test set (every third file of each
class in sorted order), so a snippet is never scored on the file it was trained on.
Chance is 25 %.

A ``keras_hub.models.BertTextClassifier`` (2 layers, width 128, 4 heads, feed-forward
512) trained from random initialisation; ``to_low_rank(budget=0.5, data=…)`` converts
every attention projection (query/key/value/output EinsumDense) and feed-forward Dense
of the encoder, ranks allocated across them for half their parameters, each factorised
to keep its outputs on 256 training snippets; then DLRT fine-tuning. Test accuracy
dense / right after conversion / after DLRT; the exported ``.keras`` file reloaded and
checked against the model it came from.

    python examples/compress_text_classifier.py           (about 15 minutes on 2 CPU cores)
    python examples/compress_text_classifier.py --quick   (a tiny run of the same code)
"""

import argparse
import os
import pathlib
import time

import keras
import keras_hub
import numpy as np

import keras_lowrank
from keras_lowrank import DLRT, compression

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true", help="a tiny model, few examples: the pipeline only")
parser.add_argument("--output", default="text_classifier", help="folder for the exported model")
args = parser.parse_args()

if args.quick:
    LAYERS, WIDTH, HEADS, MLP, WINDOW, PER_CLASS, EPOCHS, TUNE_EPOCHS = 1, 32, 2, 64, 32, 200, 1, 1
else:
    LAYERS, WIDTH, HEADS, MLP, WINDOW, PER_CLASS, EPOCHS, TUNE_EPOCHS = 2, 128, 4, 512, 128, 4000, 4, 1
CLASSES = ("analysis", "compression", "layers", "robustness")
CLS = 256  # the [CLS] token BERT pools from, after the 256 byte values
rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)

# -- the task: the subpackage a snippet of source comes from -------------------------
root = pathlib.Path(keras_lowrank.__file__).parent
files = {name: sorted((root / name).rglob("*.py")) for name in CLASSES}
held_out = {name: set(paths[1::3]) for name, paths in files.items()}


def snippets(test, per_class):
    """``per_class`` random WINDOW-byte snippets of each class, from its test or training files."""
    x, y = [], []
    for label, name in enumerate(CLASSES):
        chosen = [p for p in files[name] if (p in held_out[name]) == test]
        text = np.frombuffer(b"\n".join(p.read_bytes() for p in chosen), np.uint8).astype("int32")
        starts = rng.integers(0, len(text) - WINDOW, size=per_class)
        x.append(np.stack([text[s: s + WINDOW] for s in starts]))
        y.append(np.full(per_class, label))
    order = rng.permutation(per_class * len(CLASSES))
    ids = np.concatenate(x)[order]
    ids = np.concatenate([np.full((len(ids), 1), CLS, "int32"), ids], axis=1)
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}, \
        np.concatenate(y)[order]


train_x, train_y = snippets(test=False, per_class=PER_CLASS)
test_x, test_y = snippets(test=True, per_class=PER_CLASS // 4)
print(f"task: {len(CLASSES)} subpackages of keras_lowrank (Apache-2.0), "
      f"{sum(len(p) - len(held_out[n]) for n, p in files.items())} training files, "
      f"{sum(len(h) for h in held_out.values())} held-out files; {len(train_y):,} training and "
      f"{len(test_y):,} test snippets of {WINDOW} bytes")


def accuracy(model):
    logits = model.predict(test_x, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == test_y))


def train(model, optimizer, epochs, label):
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train_x, train_y, batch_size=32, epochs=epochs, verbose=0)
    print(f"{label}: {epochs} epoch(s) in {time.perf_counter() - start:.0f} s, "
          f"training accuracy {history.history['accuracy'][-1]:.4f}")


# -- the classifier ------------------------------------------------------------------
backbone = keras_hub.models.BertBackbone(vocabulary_size=CLS + 1, num_layers=LAYERS, num_heads=HEADS,
                                         hidden_dim=WIDTH, intermediate_dim=MLP, max_sequence_length=WINDOW + 1)
classifier = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=len(CLASSES), preprocessor=None)
train(classifier, keras.optimizers.AdamW(3e-4), EPOCHS, "dense training")
dense_accuracy = accuracy(classifier)


def encoder_kernel(path, layer):
    """Attention and feed-forward kernels of the encoder: not the pooler, not the head."""
    return "transformer_layer" in path


calibration = {name: value[:256] for name, value in train_x.items()}
low = compression.to_low_rank(classifier, budget=0.5, data=calibration, layers=encoder_kernel)
summary = compression.compression_summary(low)
converted = [r for r in summary.rows if r["rank"] is not None]
print(f"converted {len(converted)} kernels: {summary.total['dense_params']:,} → "
      f"{summary.total['low_rank_params']:,} parameters "
      f"({summary.total['low_rank_params'] / summary.total['dense_params']:.1%}); model "
      f"{classifier.count_params():,} → {summary.total['model_exported_params']:,}")
converted_accuracy = accuracy(low)
train(low, DLRT(keras.optimizers.AdamW(1e-4), steps_per_cycle=20), TUNE_EPOCHS, "DLRT fine-tuning")
compression.truncate_ranks(low)
tuned_accuracy = accuracy(low)
print(f"test accuracy (chance 0.25): dense {dense_accuracy:.4f}; right after conversion {converted_accuracy:.4f}; "
      f"after DLRT fine-tuning {tuned_accuracy:.4f}")

os.makedirs(args.output, exist_ok=True)
dense_file = os.path.join(args.output, "dense_classifier.keras")
classifier.compile()  # a fresh optimizer: the file holds the weights, as the exported one does, not AdamW's state
classifier.save(dense_file)
written = compression.export_compressed(low, os.path.join(args.output, "compressed_classifier"),
                                        formats=("keras",), overwrite=True)
reloaded = keras.saving.load_model(written["keras"])
difference = np.max(np.abs(reloaded.predict(test_x, verbose=0) - low.predict(test_x, verbose=0)))
print(f"files: dense .keras {os.path.getsize(dense_file) / 1e6:.2f} MB, compressed .keras "
      f"{os.path.getsize(written['keras']) / 1e6:.2f} MB; the reloaded file's test accuracy "
      f"{accuracy(reloaded):.4f}, max |logit difference| vs the model {difference:.2e}")
