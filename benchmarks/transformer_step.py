"""The train step of ``examples/transformer_digits.py``'s transformer: dense Adam against
``to_low_rank(rank=12, skip_first=True)`` trained with plain Adam on the factors and with
``DLRT(Adam)`` (issue 42's goal: the DLRT step ≤ 1.0× dense).

The same model as the example (2 pre-norm blocks, width 64, 4 heads, MLP 128, 16 tokens of
2×2 patches; its ``block`` is copied here because the example runs on import), untrained,
real digits, batch 32. First ``fit`` call (one step: tracing, slots, the first execution)
for each; then steps timed inside ``fit`` (one call per repeat over whole DLRT cycles of 10
steps, not shuffled: what a user runs; ``train_on_batch`` would synchronise JAX's state
after every step), the three models alternated per repeat; medians.

    python benchmarks/transformer_step.py [--repeats 7] [--cycles 6]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_lowrank import DLRT, compression, data  # noqa: E402

TOKENS, WIDTH, HEADS, HEAD_SIZE, MLP = 16, 64, 4, 16, 128


def block(x, index):
    h = keras.layers.LayerNormalization(name=f"norm_{index}a")(x)
    q, k, v = (keras.layers.EinsumDense("abc,cde->abde", (TOKENS, HEADS, HEAD_SIZE), bias_axes="de",
                                        name=f"{role}_{index}")(h) for role in ("query", "key", "value"))
    attended = ops.dot_product_attention(q, k, v)
    x = keras.layers.Add()([x, keras.layers.EinsumDense("abcd,cde->abe", (TOKENS, WIDTH), bias_axes="e",
                                                        name=f"attention_output_{index}")(attended)])
    h = keras.layers.LayerNormalization(name=f"norm_{index}b")(x)
    h = keras.layers.Dense(MLP, activation="gelu", name=f"mlp_{index}a")(h)
    return keras.layers.Add()([x, keras.layers.Dense(WIDTH, name=f"mlp_{index}b")(h)])


def transformer():
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1))
    x = keras.layers.Reshape((TOKENS, WIDTH))(keras.layers.Conv2D(WIDTH, 2, strides=2, name="patches")(images))
    for i in range(2):
        x = block(x, i)
    x = keras.layers.Flatten()(keras.layers.LayerNormalization(name="norm_out")(x))
    return keras.Model(images, keras.layers.Dense(10, name="logits")(x), name="transformer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cycles", type=int, default=6)
    args = parser.parse_args()
    x, y = data.load_digits_arrays("train")
    steps = 10 * args.cycles
    x, y = np.resize(x, (32 * steps, *x.shape[1:])), np.resize(y, 32 * steps)  # whole cycles
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    dense = transformer()
    models = {"dense Adam": (dense, keras.optimizers.Adam(1e-3))}
    for label, optimizer in (("low-rank Adam", keras.optimizers.Adam(5e-4)),
                             ("low-rank DLRT", DLRT(keras.optimizers.Adam(5e-4)))):
        models[label] = (compression.to_low_rank(transformer(), rank=12, skip_first=True), optimizer)
    first = {}
    for label, (model, optimizer) in models.items():
        model.compile(optimizer, loss)
        start = time.perf_counter()
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
        first[label] = time.perf_counter() - start
        # warm-up: the rest of the first cycle, then one call as timed (every branch has run)
        model.fit(x[32:320], y[32:320], batch_size=32, epochs=1, verbose=0, shuffle=False)
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    times = {label: [] for label in models}
    for _ in range(args.repeats):
        for label, (model, _) in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
            times[label].append((time.perf_counter() - start) / steps)
    print(f"backend {keras.backend.backend()}, batch 32, {steps} steps x {args.repeats} repeats (median); "
          f"parameters dense {dense.count_params():,}")
    for label in models:
        ratio = np.median(np.array(times[label]) / np.array(times["dense Adam"]))
        print(f"{label:<14} first fit {first[label]:6.2f} s   step {np.median(times[label]) * 1e3:6.2f} ms"
              f"   step / dense {ratio:.2f}")


if __name__ == "__main__":
    main()
