"""Compression to a parameter budget: plain vs data-aware SVD, without and with DLRT
fine-tuning, float32 and int8 factors, on real offline data (issue 38's table).

Three models, each trained from scratch per seed (20 epochs): a 64–256–256–10 MLP on
scikit-learn's digits, a Conv1D network on MNIST-1D and the transformer of
``examples/transformer_digits.py`` (EinsumDense attention projections, Dense MLPs) on
digits. Each is converted by ``to_low_rank(budget=β)`` for β in 50 / 25 / 10 / 5 % of its
converted kernels' parameters, with the plain SVD of the kernels or the data-aware one
(``data=`` 256 training examples), then scored on the test split as converted and after
``--finetune-epochs`` of DLRT (Adam 1e-3); each of those is exported as a ``.keras`` file
with float32 factors and with int8 factors (``export_compressed(quantize="int8")``,
Keras' own quantisation), scored and weighed. References: the dense model (rebuilt from
its config: no optimizer state) and Keras' own int8 quantisation of it
(``Model.quantize("int8")``). Prints one Markdown table: mean ± std over the seeds of the
test accuracy; the exported parameters, weight bytes and ``.keras`` file bytes (means).

A second table: a small keras-hub GPT-2 trained on bytes of this library's source,
converted at the same budgets (plain / data-aware, no fine-tuning), validation perplexity
in float32 and with int8 factors (first seed only).

    python benchmarks/compress_budget.py [--seeds 0 1 2] [--finetune-epochs 5] [--lm-steps 1500]
"""

import argparse
import os
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import DLRT, callbacks, compression, data  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def arrays(name):
    load = {"digits": data.load_digits_arrays, "mnist1d": data.load_mnist1d_arrays}[name]
    return [tuple(np.asarray(a) for a in load(split)) for split in ("train", "test")]


def digits_mlp(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                             keras.layers.Dense(256, activation="relu"), keras.layers.Dense(256, activation="relu"),
                             keras.layers.Dense(10)])


def mnist1d_cnn(shape):
    return keras.Sequential([keras.Input(shape), keras.layers.Conv1D(32, 5, activation="relu"),
                             keras.layers.Conv1D(64, 5, strides=2, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])


def digits_transformer(shape, tokens=16, width=64, heads=4, head_size=16, mlp=128):
    """examples/transformer_digits.py's model: 2×2 patches as 16 tokens, two pre-norm
    blocks (EinsumDense query/key/value/output, a Dense MLP), a Dense head."""
    images = keras.Input(shape)
    x = keras.layers.Reshape((tokens, width))(keras.layers.Conv2D(width, 2, strides=2)(images))
    for _ in range(2):
        h = keras.layers.LayerNormalization()(x)
        q, k, v = (keras.layers.EinsumDense("abc,cde->abde", (tokens, heads, head_size), bias_axes="de")(h)
                   for _ in range(3))
        attended = keras.ops.dot_product_attention(q, k, v)
        x = keras.layers.Add()([x, keras.layers.EinsumDense("abcd,cde->abe", (tokens, width),
                                                            bias_axes="e")(attended)])
        h = keras.layers.Dense(mlp, activation="gelu")(keras.layers.LayerNormalization()(x))
        x = keras.layers.Add()([x, keras.layers.Dense(width)(h)])
    x = keras.layers.Flatten()(keras.layers.LayerNormalization()(x))
    return keras.Model(images, keras.layers.Dense(10)(x))


MODELS = {"digits MLP": ("digits", digits_mlp), "MNIST-1D CNN": ("mnist1d", mnist1d_cnn),
          "digits transformer": ("digits", digits_transformer)}


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=512), axis=1) == y))


def exported(model, quantize=None):
    """(the model as exported, its ``.keras`` bytes, its weight bytes): a low-rank model
    by ``export_compressed`` (int8 factors when ``quantize``), a dense one rebuilt from its
    config (so without optimizer state) and quantised by Keras' own ``Model.quantize``.
    Weight bytes: each variable's size × its dtype's bytes (int8 kernels and their float32
    scales after quantisation); the file adds HDF5 headers (~2-3 KiB a variable) and the
    config, a fixed cost that dominates for small models."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes on layers Keras does not quantise (Conv, LayerNorm, a task head)
        if callbacks.low_rank_layers(model):
            written = compression.export_compressed(model, folder + "/out", formats="keras", quantize=quantize)
            result, path = written["model"], written["keras"]
        else:
            result = model.__class__.from_config(model.get_config())
            result.set_weights(model.get_weights())
            if quantize:
                result.quantize(quantize)
            path = folder + "/model.keras"
            result.save(path)
        weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in result.weights)
        return result, os.path.getsize(path), weights


def run(name, seeds, budgets, finetune_epochs):
    dataset, build = MODELS[name]
    (x, y), (x_test, y_test) = arrays(dataset)
    results = {}

    def record(key, model, size):
        (f32, file32, w32), (int8, file8, w8) = exported(model), exported(model, "int8")
        results.setdefault(key, []).append((accuracy(f32, x_test, y_test), accuracy(int8, x_test, y_test), size,
                                            file32, file8, w32, w8))

    for seed in seeds:
        keras.utils.set_random_seed(seed)
        dense = build(x.shape[1:])
        dense.compile("adam", LOSS)
        dense.fit(x, y, epochs=20, batch_size=32, verbose=0)
        record((None, None, None), dense, dense.count_params())
        for budget in budgets:
            for method in ("plain", "data-aware"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # notes on layers left dense at small budgets
                    low = compression.to_low_rank(dense, budget=budget,
                                                  data=x[:256] if method == "data-aware" else None)
                    record((budget, method, "no"), low,
                           compression.compression_summary(low).total["model_exported_params"])
                    low.compile(DLRT(keras.optimizers.Adam(1e-3)), LOSS)
                    low.fit(x, y, epochs=finetune_epochs, batch_size=32, verbose=0)
                    compression.truncate_ranks(low)
                    record((budget, method, "DLRT"), low,
                           compression.compression_summary(low).total["model_exported_params"])
    return results


def byte_lm(seed, budgets, steps, quick=False):
    """The keras-hub GPT-2 of ``examples/compress_language_model.py`` (smaller: 2 layers,
    width 128), trained ``steps`` × 16 windows of 64 bytes of this library's own source
    (Apache-2.0; every fifth file held out), then converted at each budget, plain and
    data-aware (256 training windows), without fine-tuning: validation perplexity in
    float32 and with int8 factors, exported parameters and bytes."""
    import pathlib

    import keras_hub

    import keras_lowrank

    window, batch = 64, 16
    files = sorted(pathlib.Path(keras_lowrank.__file__).parent.rglob("*.py"))
    ids = {part: np.frombuffer(b"\n".join(p.read_bytes() for i, p in enumerate(files) if (i % 5 == 4) == held),
                               np.uint8).astype("int32") for part, held in (("train", False), ("valid", True))}
    rng = np.random.default_rng(seed)

    def windows(text, starts):
        block = np.stack([text[s: s + window + 1] for s in starts])
        return {"token_ids": block[:, :-1], "padding_mask": np.ones((len(block), window), "int32")}, block[:, 1:]

    starts = np.arange(0, len(ids["valid"]) - window - 1, window)[:128 if quick else 1024]
    valid_x, valid_y = windows(ids["valid"], starts)

    def perplexity(model):
        logits = np.asarray(model.predict(valid_x, batch_size=64, verbose=0), "float64")
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return float(np.exp(-np.take_along_axis(log_probs, valid_y[..., None], -1).mean()))

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=256, num_layers=2, num_heads=4, hidden_dim=128,
                                             intermediate_dim=512, max_sequence_length=window, dropout=0.0)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01), loss=LOSS)
    x, y = windows(ids["train"], rng.integers(0, len(ids["train"]) - window - 1, steps * batch))
    lm.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    calibration, _ = windows(ids["train"], rng.integers(0, len(ids["train"]) - window - 1, 256))
    rows = []

    def record(label, method, model, params):
        (f32, file32, w32), (int8, file8, w8) = exported(model), exported(model, "int8")
        rows.append((label, method, perplexity(f32), perplexity(int8), params, w32, w8, file32, file8))

    record("dense", "—", lm, lm.count_params())
    for budget in budgets:
        for method in ("plain", "data-aware"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                low = compression.to_low_rank(lm, budget=budget, data=calibration if method == "data-aware" else None)
            record(f"{budget:.0%}", method, low, compression.compression_summary(low).total["model_exported_params"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--lm-steps", type=int, default=1500,
                        help="training steps of the byte LM (keras-hub GPT-2) table; 0: skip it")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"backend {keras.backend.backend()}, seeds {args.seeds}, DLRT fine-tuning {args.finetune_epochs} epochs")
    print("| model | budget | factorisation | fine-tuning | test accuracy, float32 | test accuracy, int8 "
          "| exported params | weights KiB, float32 | weights KiB, int8 (% of dense float32) "
          "| .keras KiB, float32 / int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        results = run(name, args.seeds, args.budgets, args.finetune_epochs)
        dense_weights = np.mean([v[5] for v in results[(None, None, None)]])
        for (budget, method, tuned), values in results.items():
            f32, int8 = (np.array([v[i] for v in values]) for i in (0, 1))
            params, file32, file8, weights32, weights8 = (np.mean([v[i] for v in values]) for i in range(2, 7))
            label = "dense" if budget is None else f"{budget:.0%}"
            int8_label = " (Keras int8 of the dense model)" if budget is None else ""
            print(f"| {name} | {label} | {method or '—'} | {tuned or '—'} | {f32.mean():.4f} ± {f32.std():.4f} | "
                  f"{int8.mean():.4f} ± {int8.std():.4f}{int8_label} | {int(params):,} | {weights32 / 1024:.1f} | "
                  f"{weights8 / 1024:.1f} ({weights8 / dense_weights:.1%}) | "
                  f"{file32 / 1024:.0f} / {file8 / 1024:.0f} |")
    if args.lm_steps:
        print(f"\nbyte LM (keras-hub GPT-2, 2 layers, width 128), seed {args.seeds[0]}, {args.lm_steps} training "
              "steps, no fine-tuning; validation perplexity (lower is better)")
        print("| budget | factorisation | perplexity, float32 | perplexity, int8 | exported params "
              "| weights KiB, float32 | weights KiB, int8 (% of dense float32) | .keras KiB, float32 / int8 |")
        print("|---|---|---|---|---|---|---|---|")
        rows = byte_lm(args.seeds[0], args.budgets, args.lm_steps, quick=args.lm_steps < 100)
        dense_weights = rows[0][5]
        for label, method, p32, p8, params, w32, w8, file32, file8 in rows:
            int8_label = " (Keras int8 of the dense model)" if label == "dense" else ""
            print(f"| {label} | {method} | {p32:.3f} | {p8:.3f}{int8_label} | {params:,} | {w32 / 1024:.1f} | "
                  f"{w8 / 1024:.1f} ({w8 / dense_weights:.1%}) | {file32 / 1024:.0f} / {file8 / 1024:.0f} |")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
