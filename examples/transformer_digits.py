"""A small transformer on digits, compressed with DLRT and exported.

The classifier is built from Keras layers only: 2×2 patches of the 8×8 image become 16
tokens (a strided Conv2D, as in ViT), two pre-norm transformer blocks whose attention
projections are ``EinsumDense`` layers (query, key and value "abc,cde->abde", output
"abcd,cde->abe", with ``keras.ops.dot_product_attention`` between) and whose MLPs are
``Dense`` layers on the tokens, then a Dense head on the flattened tokens (which also
gives the model the tokens' positions). ``to_low_rank`` turns the projections and MLPs
into DynamicLowRankEinsumDense / DynamicLowRankDense layers by the truncated SVD of
their trained kernels, a few epochs with the DLRT optimizer wrapper recover the accuracy
while the ranks adapt, and ``export_compressed`` writes a `.keras` file of Keras' own
layers (two EinsumDense per projection), checked against the model after reloading.

(``keras.layers.MultiHeadAttention`` and keras-hub's transformers convert the same way:
``to_low_rank`` reaches the projections inside them; see
``examples/compress_language_model.py``. Here attention is written out to show the
layers it is made of.)

    python examples/transformer_digits.py [--epochs 30]   (about a minute on a laptop CPU)
"""

import argparse
import os
import tempfile

import keras
import numpy as np
from keras import ops

from keras_lowrank import DLRT, callbacks, compression, data

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=30, help="dense training; fine-tuning gets a third")
epochs = parser.parse_args().epochs

TOKENS, WIDTH, HEADS, HEAD_SIZE, MLP = 16, 64, 4, 16, 128

x_train, y_train = data.load_digits_arrays("train")
x_test, y_test = data.load_digits_arrays("test")
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def block(x, index):
    """Pre-norm transformer block: x + attention(LN(x)), then + MLP(LN(·))."""
    h = keras.layers.LayerNormalization(name=f"norm_{index}a")(x)
    q, k, v = (keras.layers.EinsumDense("abc,cde->abde", (TOKENS, HEADS, HEAD_SIZE), bias_axes="de",
                                        name=f"{role}_{index}")(h) for role in ("query", "key", "value"))
    attended = ops.dot_product_attention(q, k, v)  # softmax(q kᵀ / √16) v, per head
    x = keras.layers.Add()([x, keras.layers.EinsumDense("abcd,cde->abe", (TOKENS, WIDTH), bias_axes="e",
                                                        name=f"attention_output_{index}")(attended)])
    h = keras.layers.LayerNormalization(name=f"norm_{index}b")(x)
    h = keras.layers.Dense(MLP, activation="gelu", name=f"mlp_{index}a")(h)
    return keras.layers.Add()([x, keras.layers.Dense(WIDTH, name=f"mlp_{index}b")(h)])


keras.utils.set_random_seed(0)
images = keras.Input(x_train.shape[1:])
patches = keras.layers.Conv2D(WIDTH, 2, strides=2, name="patches")(images)  # 4×4 patches of 2×2 pixels
x = keras.layers.Reshape((TOKENS, WIDTH))(patches)
for i in range(2):
    x = block(x, i)
x = keras.layers.Flatten()(keras.layers.LayerNormalization(name="norm_out")(x))
dense = keras.Model(images, keras.layers.Dense(10, name="logits")(x), name="transformer")
dense.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
dense.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
print(f"dense accuracy: {dense.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# Every projection and MLP layer becomes low rank at rank 12 (the patch embedding and
# the head are kept, as usual); max_rank = 24 leaves DLRT room to grow, and it
# truncates by tol = 0.1 from there.
low = compression.to_low_rank(dense, rank=12, skip_first=True)
low.compile(DLRT(keras.optimizers.Adam(5e-4)), loss, metrics=["accuracy"])
print(f"after the SVD, before fine-tuning: {low.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
low.fit(x_train, y_train, batch_size=32, epochs=max(1, epochs // 3), verbose=0)
print(f"low-rank accuracy: {low.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
print("ranks:", {layer.name: layer.rank for layer in callbacks.low_rank_layers(low)})
print(compression.compression_summary(low))

with tempfile.TemporaryDirectory() as out:
    written = compression.export_compressed(low, out, formats="keras")
    reloaded = keras.saving.load_model(written["keras"])  # Keras' own layers only
    kinds = sorted({type(layer).__name__ for layer in reloaded.get_layer("query_0").layers})
    difference = np.abs(ops.convert_to_numpy(reloaded.predict(x_test, verbose=0))
                        - ops.convert_to_numpy(low.predict(x_test, verbose=0))).max()
    print(f"exported: {reloaded.count_params():,} parameters (dense: {dense.count_params():,}); "
          f"model.keras {os.path.getsize(written['keras']) / 1024:.0f} KiB; query_0 is {kinds}; "
          f"max |logit difference| vs the trained model {difference:.1e}")
