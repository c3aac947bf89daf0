"""CKA map over ResNet50's activations: ``cka_map`` against one bare ``jax.jit`` of the
same estimator (issue 21's GPU figure; run by ``benchmarks/gpu_suite.sh``, JAX backend).

``keras.applications.ResNet50(weights=None)`` at ``--size``² × 3 inputs, 10 classes;
``--examples`` synthetic images (uniform [0, 1]: the figure is the map's speed, not a
finding about ResNet50) in batches of ``--batch``; the default layers (every Conv2D and
Dense: 54 at ResNet50), so the all-pairs map is 54 × 54 of unbiased linear CKA.

- ``ours``: ``cka_map(model, x, max_batches=...)`` — forward pass, Grams and their
  inner products compiled into one predict step per batch (``_HSICTerms``), the O(m²)
  rest in float64 on the host. First call (compilation included) and second.
- ``one jax.jit, no Keras``: per batch, one jitted function from the images to the
  (m, m) unbiased HSIC matrix — ``stateless_call`` of a feature model, each layer's
  features centred over the batch, K = X Xᵀ with a zero diagonal, Song et al.'s
  formula, all on the device in float32 — the batches' matrices summed on the host in
  float64, then CKA. Written independently of ours (the full Grams, no block
  symmetry), so the values check ours too.

Both under full float32 matrix products (no TF32; ``float32_matmuls``). Seconds are
medians of ``--repeats`` alternating calls after one warm-up each.

    KERAS_BACKEND=jax python benchmarks/cka_resnet50.py [--examples 2048 --batch 256 --size 32]
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import float32_matmuls  # noqa: E402
from keras_lowrank.analysis import cka_map  # noqa: E402
from keras_lowrank.analysis.cka import DEFAULT_LAYER_TYPES  # noqa: E402


def bare_map(model, layers):
    """A function x_batches → CKA matrix, the per-batch HSIC in one ``jax.jit``."""
    import jax
    import jax.numpy as jnp

    features = keras.Model(model.inputs, [layer.output for layer in layers])

    @jax.jit
    def hsic(trainable, non_trainable, x):
        outputs, _ = features.stateless_call(trainable, non_trainable, x, training=False)
        n = x.shape[0]
        grams = []
        for f in outputs:
            f = jnp.reshape(f, (n, -1)).astype("float32")
            f = f - jnp.mean(f, axis=0, keepdims=True)
            k = f @ f.T
            grams.append(k * (1.0 - jnp.eye(n, dtype=k.dtype)))
        k = jnp.stack(grams)                        # (m, n, n), zero diagonals
        flat = jnp.reshape(k, (len(grams), -1))
        rows = jnp.sum(k, axis=2)                   # (m, n): K̃1
        sums = jnp.sum(rows, axis=1)                # 1ᵀK̃1
        trace = flat @ flat.T                       # tr(K̃L̃)
        return (trace + jnp.outer(sums, sums) / ((n - 1) * (n - 2))
                - 2.0 * rows @ rows.T / (n - 2)) / (n * (n - 3))

    def run(batches):
        # the weights' current buffers (Keras' predict may have replaced the earlier ones)
        trainable = [v.value for v in features.trainable_variables]
        non_trainable = [v.value for v in features.non_trainable_variables]
        total = sum(np.asarray(hsic(trainable, non_trainable, xb), np.float64) for xb in batches)
        d = np.sqrt(np.diag(total))
        return total / np.outer(d, d)

    return run


def timed(fn, repeats):
    fn()  # warm-up: compilation
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import jax

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 1, (args.examples, args.size, args.size, 3)).astype("float32")
    host_batches = [x[i:i + args.batch] for i in range(0, len(x), args.batch)]
    batches = [jax.device_put(b) for b in host_batches]
    layers = [layer for layer in model.layers if isinstance(layer, DEFAULT_LAYER_TYPES)]
    start = time.perf_counter()
    cka_map(model, host_batches[:1])  # the first call: compiles the extractor
    first = time.perf_counter() - start
    ours = lambda: cka_map(model, host_batches).matrix  # noqa: E731
    bare = bare_map(model, layers)
    with float32_matmuls():
        start = time.perf_counter()
        bare([batches[0]])
        bare_first = time.perf_counter() - start
        ours_s, ours_matrix = timed(ours, args.repeats)
        bare_s, bare_matrix = timed(lambda: bare(batches), args.repeats)
    device = jax.devices()[0]
    print(json.dumps({
        "device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__, "keras": keras.__version__,
        "model": "ResNet50", "params": model.count_params(), "layers": len(layers), "examples": args.examples,
        "batch": args.batch, "size": args.size,
        "ours_first_call_s": first, "bare_first_call_s": bare_first,
        "ours_s": ours_s, "bare_jit_s": bare_s, "ours_over_bare": ours_s / bare_s,
        "examples_per_s_ours": args.examples / ours_s,
        "max_abs_difference": float(np.nanmax(np.abs(ours_matrix - bare_matrix))),
    }, indent=1))


if __name__ == "__main__":
    main()
