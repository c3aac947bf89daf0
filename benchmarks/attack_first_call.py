"""First call of an attack on a model: time and peak memory, loop unrolled or not (issue 21).

Each configuration runs in a fresh Python (TensorFlow backend unless ``--backend jax``),
so the time includes tracing and graph optimisation and the peak resident memory is
that of one attack:
``PGD(8/255, steps)(model, x, y)`` on a batch of 16. Models: the demo CNN (digits,
8×8×1, 6 layers) and MobileNetV2 (32×32×3, weights=None, 10 classes, ~150 layers); also
``resnet50`` and ``densenet121`` (same input) with ``--models``.
"unrolled" forces the old rule (unroll up to 20 steps whatever the model), "as
shipped" uses ``attacks.unrolls`` (unroll only models of ≤ 32 layers).

    python benchmarks/attack_first_call.py [--models cnn mobilenetv2 resnet50 densenet121] [--steps 10 20 100]
    python benchmarks/attack_first_call.py --report [--models ...] [--backend jax]

``--report``: the first call of ``evaluate_robustness`` with FGSM, PGD-10 and Gaussian
noise at three sizes each (ε = 2/255, 4/255, 8/255; σ = 0.05, 0.1, 0.2), without and
with the default large-ε probe, against the first call of one PGD-10, called directly
(``PGD(8/255)(model, x, y)``, "as shipped") and as one row alone through Keras'
``evaluate`` (``PerturbedModel(model, PGD(8/255)).evaluate(x, y)``, "evaluate": the
path every report row takes), each in a fresh Python. Goal (issue 21): the report ≤ 2×
the one PGD.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, keras
from keras_lowrank.robustness import PGD, attacks
model_name, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "unrolled":
    attacks._MAX_UNROLLED_LAYERS = 10 ** 9
if model_name == "cnn":
    from keras_lowrank._demo.models import small_cnn
    model, shape = small_cnn(), (8, 8, 1)
else:
    build = {"mobilenetv2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50,
             "densenet121": keras.applications.DenseNet121}[model_name]
    model, shape = build(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None), (32, 32, 3)
x = np.random.default_rng(0).uniform(size=(16,) + shape).astype("float32")
y = np.arange(16) % 10
model.predict(x, verbose=0)  # the model's own graph built: only the attack is timed
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode.startswith("report"):
    from keras_lowrank.robustness import FGSM, evaluate_robustness
    sizes = (2 / 255, 4 / 255, 8 / 255)
    sweep = [FGSM(e) for e in sizes] + [PGD(e, steps=steps, seed=0) for e in sizes]
    evaluate_robustness(model, (x, y), attacks=sweep, noise_sigmas=(0.05, 0.1, 0.2),
                        large_eps="auto" if mode == "report+probe" else None)
elif mode == "evaluate":  # one PGD row alone, through Keras' evaluate as the report runs it
    from keras_lowrank.robustness import PerturbedModel
    wrapper = PerturbedModel(model, PGD(8 / 255, steps=steps, seed=0))
    wrapper.compile(optimizer=None, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    wrapper.evaluate(x, y, batch_size=len(x), verbose=0)
else:
    attack = PGD(8 / 255, steps=steps, seed=0)
    np.asarray(attack(model, x, y))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"model": model_name, "steps": steps, "mode": mode, "seconds": round(seconds, 2),
                  "unrolled": attacks.unrolls(model, steps) or mode == "unrolled" and steps <= 20,
                  "peak_mib": round(peak / 1024), "peak_before_mib": round(before / 1024)}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "mobilenetv2"],
                        choices=["cnn", "mobilenetv2", "resnet50", "densenet121"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 100])
    parser.add_argument("--report", action="store_true", help="a report's first call against one PGD-10's")
    parser.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"],
                        help="Keras backend of the children (JAX never unrolls: the modes coincide)")
    args = parser.parse_args(argv)
    if args.report:
        args.steps = [10]
    env = {**os.environ, "KERAS_BACKEND": args.backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for model in args.models:
        for steps in args.steps:
            modes = ("unrolled", "as shipped") if steps <= 20 else ("as shipped",)
            if args.report:
                modes = ("as shipped", "evaluate", "report", "report+probe")
            for mode in modes:
                done = subprocess.run([sys.executable, "-c", CHILD, model, str(steps), mode], capture_output=True,
                                      text=True, env=env, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{model:12s} PGD-{steps:<4d} {mode:12s} unrolled={str(row['unrolled']):5s} "
                      f"{row['seconds']:7.2f} s  peak {row['peak_mib']} MiB (model alone {row['peak_before_mib']})",
                      flush=True)
    return rows


if __name__ == "__main__":
    main()
