"""Whether the default device's QR / SVD give DLRT's bases NumPy's signs, and how DLRT trains there.

DLRT carries Adam's second moments into each new basis as (A √v Bᵀ)² (as the authors' code),
which depends on the signs of the bases' columns: with Householder QR's signs (LAPACK's, which
``keras.ops.qr`` / ``svd`` follow on the CPUs of the three backends) a rank-3 target trains to
rank 3-4, with R's diagonal made positive to rank 12 (docs/benchmarks.md). On a CPU the tests
hold ``keras.ops`` and the NumPy host functions to the same signs; a GPU's cuSOLVER may choose
others. This script reports, on the default device:

1. ``factorization.augment`` / ``truncate`` (``keras.ops``) against ``host_factorization``'s
   (NumPy, float64) on 20 random layers each: the largest difference of the factors as they
   come (signs included) and after aligning each column's sign, and how many columns flipped;
2. the rank-3 problem of ``tests/test_dlrt_training.py`` (``DynamicLowRankDense(64,
   max_rank=32, rank=16, tol=0.05)``, ``DLRT(Adam(1e-2))``, 8 epochs of 20 steps, seeds 0-1):
   final ranks and losses (CPU, JAX, Intel Xeon: ranks 4 and 3, losses 0.011 and 0.037).

    python benchmarks/dlrt_signs.py
"""

import json

import keras
import numpy as np
from keras import ops

from keras_lowrank._low_rank import factorization
from keras_lowrank._low_rank import host_factorization as host
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.optimizers import DLRT
from keras_lowrank.precision import float32_matmuls


def _orthonormal(rng, n, r):
    return np.linalg.qr(rng.normal(size=(n, r)))[0]


def compare_signs(trials=20, n=96, m=64, max_rank=16):
    """Largest |ops − host| of the factors with and without column signs aligned, flips counted."""
    rng = np.random.default_rng(0)
    worst = {"augment": [0.0, 0.0, 0], "truncate": [0.0, 0.0, 0]}
    for _ in range(trials):
        r = int(rng.integers(2, max_rank // 2 + 1))
        d = np.sort(rng.uniform(0.1, 5.0, size=r))[::-1]
        u, v, s = np.zeros((n, max_rank)), np.zeros((m, max_rank)), np.zeros((max_rank, max_rank))
        u[:, :r], v[:, :r] = _orthonormal(rng, n, r), _orthonormal(rng, m, r)
        s[:r, :r] = (_orthonormal(rng, r, r) * d) @ _orthonormal(rng, r, r).T
        grads = [rng.normal(size=t.shape) for t in (u, v)]
        u, s, v, *grads = (a.astype("float32") for a in (u, s, v, *grads))
        tensors = [ops.convert_to_tensor(a) for a in (u, s, v, *grads)]
        with float32_matmuls():
            results = {"augment": (factorization.augment(*tensors, max_rank), host.augment(u, s, v, *grads, max_rank)),
                       "truncate": (factorization.truncate(*tensors[:3], 0.3, 1), host.truncate(u, s, v, 0.3, 1))}
        for name, (want, got) in results.items():
            want = [ops.convert_to_numpy(t) for t in want]
            signs_u = np.where(np.sum(want[0] * got[0], axis=0) < 0, -1.0, 1.0)
            signs_v = np.where(np.sum(want[2] * got[2], axis=0) < 0, -1.0, 1.0)
            aligned = (got[0] * signs_u, signs_u[:, None] * got[1] * signs_v, got[2] * signs_v)
            entry = worst[name]
            entry[0] = max(entry[0], max(float(np.abs(w - g).max()) for w, g in zip(want, got)))
            entry[1] = max(entry[1], max(float(np.abs(w - g).max()) for w, g in zip(want, aligned)))
            entry[2] += int(np.sum(signs_u < 0) + np.sum(signs_v < 0))
    return {name: {"max_diff_as_is": round(a, 7), "max_diff_signs_aligned": round(b, 7), "columns_flipped": c}
            for name, (a, b, c) in worst.items()}


def rank_three(seeds=(0, 1)):
    """Final rank and loss of DLRT on a rank-3 linear target, per seed."""
    results = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(1280, 64)).astype("float32")
        y = (x @ (rng.normal(size=(64, 3)) @ rng.normal(size=(3, 64)) / np.sqrt(64 * 3))).astype("float32")
        keras.utils.set_random_seed(seed)
        layer = DynamicLowRankDense(64, max_rank=32, rank=16, tol=0.05)
        model = keras.Sequential([keras.Input((64,)), layer])
        model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=10), loss="mse")
        with float32_matmuls():
            history = model.fit(x, y, batch_size=64, epochs=8, verbose=0)
        results.append({"seed": seed, "rank": layer.rank, "loss": round(history.history["loss"][-1], 4)})
    return results


def main():
    device = "cpu"
    if keras.backend.backend() == "jax":
        import jax

        device = jax.default_backend()
    print(json.dumps({"backend": keras.backend.backend(), "device": device, "signs": compare_signs()}), flush=True)
    print(json.dumps({"rank_three": rank_three()}), flush=True)


if __name__ == "__main__":
    main()
