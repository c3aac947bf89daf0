"""VGG16-CIFAR on the CPU: DLRT's training step and the exported model's inference
against the dense network's (issue 21's CPU figures), ratios in one run.

The network of ``examples/dlrt_vgg16_cifar10.py`` (13 convolutions, 3 dense layers,
32×32×3 inputs; ``--image-size 224`` the same network on 224×224 images, issue 42's
compute-bound case, at ``--batch 64`` in ``gpu_suite.sh``), batch 128 of synthetic images.
Low rank: ``to_low_rank`` at ``--rank``
(room to ``--max-rank``; the first convolution and the classifier stay dense, layers
whose rank would not pay stay dense too), trained by ``DLRT(Adam)``; dense by Adam.
Step time: the mean over whole DLRT cycles (10 steps: one basis augmentation, nine
coefficient steps, truncation at the cycle's end), after a first cycle that compiles.
Inference: ``compressed_model`` (Keras' own layers at the exact ranks) against the
dense model, ``predict_on_batch`` on one batch, after a warm-up call.

Goals (issue 21): DLRT step ≤ 0.5× dense at ranks giving ≥ 90 % compression; exported
inference ≤ 0.2× dense.

    python benchmarks/vgg16_cpu.py [--rank 32 --max-rank 64 --cycles 2 --batch 128 --image-size 32]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_lowrank import DLRT, compression  # noqa: E402
from keras_lowrank_experiments.cifar import synthetic_cifar10, vgg16_cifar  # noqa: E402


def mean_step(model, x, y, batch, cycles):
    """Seconds per step over ``cycles`` cycles of 10 steps, after one cycle that compiles."""
    n = 10 * batch
    model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(x[:n], y[:n], batch_size=batch, epochs=cycles, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / (10 * cycles)


def inference(model, x, repeats=5):
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict_on_batch(x)
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--max-rank", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32, help="a multiple of 32 (224: compute-bound)")
    args = parser.parse_args()
    x, y = synthetic_cifar10("train", 10 * args.batch, image_size=args.image_size)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(0)
    dense = vgg16_cifar(image_size=args.image_size)
    low = compression.to_low_rank(dense, rank=args.rank, max_rank=args.max_rank, skip_first=True)
    dense.compile(keras.optimizers.Adam(1e-3), loss)
    low.compile(DLRT(keras.optimizers.Adam(1e-3)), loss)
    dense_step = mean_step(dense, x, y, args.batch, args.cycles)
    low_step = mean_step(low, x, y, args.batch, args.cycles)
    summary = compression.compression_summary(low)
    exported = compression.compressed_model(low)
    batch = x[:args.batch]
    dense_inference, exported_inference = inference(dense, batch), inference(exported, batch)
    result = {"backend": keras.backend.backend(), "rank": args.rank, "max_rank": args.max_rank,
              "batch": args.batch, "image_size": args.image_size,
              "ranks_after": {r["layer"]: r["rank"] for r in summary.rows},
              "model_compression_rate": summary.total["model_compression_rate"],
              "dense_params": dense.count_params(), "exported_params": exported.count_params(),
              "dense_step_s": dense_step, "dlrt_step_s": low_step, "step_ratio": low_step / dense_step,
              "dense_inference_s": dense_inference, "exported_inference_s": exported_inference,
              "inference_ratio": exported_inference / dense_inference}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
