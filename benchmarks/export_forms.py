"""Exported inference with each low-rank layer in its smaller form (``prefer="size"``) or
its faster one (``prefer="speed"``, timed here), against the dense model, ratios in one run.

The VGG16 of ``examples/dlrt_vgg16_cifar10.py`` converted by ``to_low_rank`` at ``--rank``
(the first convolution and the classifier stay dense), untrained (the forms' speed does
not depend on the weights), synthetic 32×32×3 images; and an MLP of ``--width`` features
(three hidden layers at ``--mlp-rank``). For each batch size: ``compressed_model`` with
each preference, timed with ``predict_on_batch`` against the dense model, ``--rounds``
rounds alternating the three models, medians. ``prefer="speed"`` times the layers on a
batch of that size (``data``), so each batch size gets its own choice.

    python benchmarks/export_forms.py [--batches 1 128 --rank 32 --rounds 7]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import compression  # noqa: E402
from keras_lowrank_experiments.cifar import synthetic_cifar10, vgg16_cifar  # noqa: E402


def per_call(model, x, seconds=0.2):
    """Calls of ``predict_on_batch`` needed for a round of about ``seconds``."""
    model.predict_on_batch(x)
    start = time.perf_counter()
    model.predict_on_batch(x)
    return int(max(1, min(100, seconds / max(time.perf_counter() - start, 1e-6))))


def timed(models, x, rounds):
    """{name: median seconds per call}, the models alternating in each round."""
    calls = {name: per_call(model, x) for name, model in models.items()}
    samples = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                model.predict_on_batch(x)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: float(np.median(values)) for name, values in samples.items()}


def mlp(width, inputs=256, classes=10):
    return keras.Sequential([keras.Input((inputs,))] + [keras.layers.Dense(width, activation="relu")
                                                         for _ in range(3)] + [keras.layers.Dense(classes)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--mlp-rank", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=["vgg16", "mlp"], choices=["vgg16", "mlp"])
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    results = []
    for name in args.models:
        if name == "vgg16":
            dense = vgg16_cifar()
            low = compression.to_low_rank(dense, rank=args.rank, max_rank=args.rank, skip_first=True)
            images = synthetic_cifar10("train", max(args.batches))[0]
        else:
            dense = mlp(args.width)
            low = compression.to_low_rank(dense, rank=args.mlp_rank, max_rank=args.mlp_rank)
            images = rng.normal(size=(max(args.batches), 256)).astype("float32")
        for batch in args.batches:
            x = images[:batch]
            size = compression.compressed_model(low, prefer="size")
            start = time.perf_counter()
            written_forms, timings = compression.export_forms(low, "speed", data=x)
            choosing = time.perf_counter() - start
            speed = compression.compressed_model(low, prefer=written_forms)
            seconds = timed({"dense": dense, "size": size, "speed": speed}, x, args.rounds)
            results.append({
                "model": name, "backend": keras.backend.backend(), "batch": batch,
                "params": {"dense": dense.count_params(), "size": size.count_params(),
                           "speed": speed.count_params()},
                "seconds": seconds,
                "ratio_to_dense": {k: seconds[k] / seconds["dense"] for k in ("size", "speed")},
                "dense_layers_for_speed": sorted(p for p, f in written_forms.items() if f == "dense"),
                "layers": len(written_forms), "choosing_s": choosing,
                "layer_timings": {p: t["seconds"] for p, t in timings.items()},
            })
            print(json.dumps({k: v for k, v in results[-1].items() if k != "layer_timings"}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
