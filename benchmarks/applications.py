"""keras.applications convnets through the whole library with default arguments (issue 21).

Each model (``weights=None``, a small input, 10 classes, logits) runs in a fresh Python:

1. ``to_low_rank(model, rank=8)`` (what converts, what is skipped and why: the warnings);
2. one DLRT ``fit`` step (Adam inside) on a batch of 16 random images, ``truncate_ranks``;
3. ``export_compressed(..., formats="keras")``, the file reloaded with Keras alone and
   compared with the trained low-rank model (max |Δ logits|);
4. PGD-10 (L∞ 8/255) through ``evaluate_robustness`` (Keras' ``evaluate``);
5. ``representation_ranks`` and ``cka_map`` with their default layers.

It prints one row per model: layers converted, seconds per stage, peak resident memory,
and the first error if a stage fails. Random inputs: nothing here measures accuracy.

    python benchmarks/applications.py                        # every model below, this backend
    python benchmarks/applications.py --models MobileNetV2 ResNet50
    KERAS_BACKEND=jax python benchmarks/applications.py --models MobileNetV2
    python benchmarks/applications.py --analysis-only --models EfficientNetB0 [--auto-whole 8192]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# name: (input side, constructor arguments besides the common ones)
MODELS = {
    "MobileNetV2": (32, {"alpha": 0.35}),
    "MobileNetV3Small": (32, {"minimalistic": True}),
    "ResNet50": (32, {}),
    "ResNet50V2": (32, {}),
    "DenseNet121": (32, {}),
    "VGG16": (32, {}),
    "EfficientNetB0": (32, {}),
    "EfficientNetV2B0": (32, {}),
    "ConvNeXtTiny": (32, {}),
    # (Keras 3.15 has no RegNet; every other family of keras.applications is here,
    # at its smallest member.)
    "MobileNet": (32, {"alpha": 0.25}),
    "InceptionResNetV2": (75, {}),
    "Xception": (71, {}),
    "InceptionV3": (75, {}),
    "NASNetMobile": (32, {}),
}


def analysis_only(name, auto_whole=None):
    """``representation_ranks`` and ``cka_map`` with default layers on the unconverted
    model; ``auto_whole`` overrides the widest map measured whole (the before/after of
    commit 266910a: 8192 before, 2048 after)."""
    import warnings

    import keras
    import numpy as np

    import keras_lowrank.analysis.representation as representation
    from keras_lowrank import analysis

    if auto_whole:
        representation._AUTO_WHOLE = auto_whole
    side, extra = MODELS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10,
                                              classifier_activation=None, **extra)
    x = np.random.default_rng(0).uniform(0, 1, size=(16, side, side, 3)).astype("float32")
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ranks = analysis.representation_ranks(model, x)
    middle = time.time()
    cka = analysis.cka_map(model, x)
    return {"model": name, "auto_whole": representation._AUTO_WHOLE, "ranked_layers": len(ranks),
            "ranks_seconds": round(middle - start, 1), "cka_layers": len(cka.rows),
            "cka_seconds": round(time.time() - middle, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def one(name):
    """Runs the stages on one model in this process; returns the record."""
    import warnings

    import keras
    import numpy as np

    from keras_lowrank import DLRT, analysis, compression
    from keras_lowrank._low_rank.model import low_rank_layers
    from keras_lowrank.robustness import PGD, evaluate_robustness

    side, extra = MODELS[name]
    record = {"model": name, "backend": keras.backend.backend(), "seconds": {}}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(16, side, side, 3)).astype("float32")
    y = np.arange(16) % 10
    stage, start = "build", time.time()
    try:
        model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10,
                                                  classifier_activation=None, **extra)
        record["layers"] = len(model.layers)
        stage, start = "to_low_rank", time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            low = compression.to_low_rank(model, rank=8)
        record["warnings"] = [str(w.message)[:160] for w in caught if issubclass(w.category, UserWarning)]
        record["converted"] = len(low_rank_layers(low))
        record["seconds"][stage] = round(time.time() - start, 1)
        stage, start = "dlrt_step", time.time()
        low.compile(DLRT(keras.optimizers.Adam(1e-3)), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        low.fit(x, y, batch_size=16, epochs=1, verbose=0)
        compression.truncate_ranks(low)
        record["seconds"][stage] = round(time.time() - start, 1)
        stage, start = "export", time.time()
        folder = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"applications_{name}_{os.getpid()}")
        written = compression.export_compressed(low, folder, formats="keras", overwrite=True)
        reloaded = keras.saving.load_model(written["keras"], compile=False)
        record["export_max_abs_diff"] = float(np.abs(
            keras.ops.convert_to_numpy(reloaded.predict(x, verbose=0))
            - keras.ops.convert_to_numpy(low.predict(x, verbose=0))).max())
        record["parameters"] = [int(model.count_params()), int(reloaded.count_params())]
        record["seconds"][stage] = round(time.time() - start, 1)
        stage, start = "pgd10", time.time()
        report = evaluate_robustness(low, (x, y), attacks=[PGD(8 / 255, steps=10)], large_eps=None)
        record["pgd10_rows"] = len(report.rows)
        record["seconds"][stage] = round(time.time() - start, 1)
        stage, start = "analysis", time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ranks = analysis.representation_ranks(low, x)
        cka = analysis.cka_map(low, x)
        record["ranked_layers"], record["cka_layers"] = len(ranks), len(cka.rows)
        record["seconds"][stage] = round(time.time() - start, 1)
        record["ok"] = True
    except Exception as error:  # noqa: BLE001 - the benchmark reports every failure
        record["ok"] = False
        record["failed_at"] = stage
        record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    record["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", help="also write the records here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--analysis-only", action="store_true",
                        help="only the default analysis of each unconverted model, in this process")
    parser.add_argument("--auto-whole", type=int, help="with --analysis-only: widest map measured whole")
    args = parser.parse_args(argv)
    if args.analysis_only:
        for name in args.models:
            print(json.dumps(analysis_only(name, args.auto_whole)), flush=True)
        return
    if args.one:
        print("RECORD " + json.dumps(one(args.one)), flush=True)
        return
    records = []
    for name in args.models:
        start = time.time()
        result = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in result.stdout.splitlines() if line.startswith("RECORD ")]
        record = json.loads(lines[-1][7:]) if lines else {
            "model": name, "ok": False, "error": (result.stderr or "no output")[-300:]}
        record["wall_seconds"] = round(time.time() - start, 1)
        records.append(record)
        print(json.dumps(record), flush=True)
    print("\n| model | backend | layers | converted | to_low_rank s | DLRT step s | export s (max Δ) | "
          "PGD-10 s | ranks + CKA s | peak MiB | result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        s = r.get("seconds", {})
        print(f"| {r['model']} | {r.get('backend', '')} | {r.get('layers', '')} | {r.get('converted', '')} "
              f"| {s.get('to_low_rank', '')} | {s.get('dlrt_step', '')} "
              f"| {s.get('export', '')} ({r.get('export_max_abs_diff', float('nan')):.1e}) | {s.get('pgd10', '')} "
              f"| {s.get('analysis', '')} | {r.get('peak_rss_mib', '')} "
              f"| {'ok' if r.get('ok') else 'FAILED at ' + r.get('failed_at', '?') + ': ' + r.get('error', '')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)


if __name__ == "__main__":
    main()
