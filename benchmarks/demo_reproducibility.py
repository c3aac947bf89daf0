"""Do the demo's LR numbers reproduce on another machine? (issue 18)

Runs the LR part of the main job (``keras-lowrank demo --full --dlrt-datasets
--analysis-datasets``: baseline and LR CNN on digits, 3 seeds, then the robustness
report of the seed-0 models) twice in fresh processes, under two float set-ups that
stand in for two machines:

- ``A``: as installed (TensorFlow with oneDNN, every core);
- ``B``: oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``: Eigen kernels, other summation
  orders) on one core (``taskset -c 0`` where available, and one intra-op thread).

It then prints, per model and metric, both means ± std over the seeds and whether they
agree within the larger of the two standard deviations (the issue's criterion), and
the seed-0 robustness rows side by side.

    python benchmarks/demo_reproducibility.py [--output runs/reproducibility] [--seeds 0 1 2]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

SETUPS = {
    "A": ({}, []),
    "B": ({"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"},
          ["taskset", "-c", "0"] if shutil.which("taskset") else []),
}
METRICS = ("accuracy", "variance_rank_99", "effective_rank", "accuracy_sigma_0.1",
           "accuracy_sigma_0.2", "accuracy_sigma_0.3", "compressed_feature_accuracy")


def run(setup, folder, seeds):
    extra_env, prefix = SETUPS[setup]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", **extra_env)
    command = prefix + [sys.executable, "-m", "keras_lowrank", "demo", "--full", "--output", folder,
                        "--overwrite", "--seeds", *map(str, seeds),
                        "--dlrt-datasets", "--analysis-datasets"]
    start = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"set-up {setup}: {' '.join(f'{k}={v}' for k, v in extra_env.items()) or 'as installed'}"
          f" {' '.join(prefix)} — {time.time() - start:.0f} s", flush=True)
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/reproducibility")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    results = {s: run(s, os.path.join(args.output, s), args.seeds) for s in SETUPS}
    print("\n| model | metric | A: mean ± std | B: mean ± std | |Δ| ≤ max std |")
    print("|---|---|---|---|---|")
    agree = total = 0
    for model in ("baseline", "lr"):
        for metric in METRICS:
            cells = [results[s]["mean"][model].get(metric) for s in SETUPS]
            if cells[0] is None:
                continue
            ok = abs(cells[0]["mean"] - cells[1]["mean"]) <= max(cells[0]["std"], cells[1]["std"])
            agree, total = agree + ok, total + 1
            print(f"| {model} | {metric} | {cells[0]['mean']:.4f} ± {cells[0]['std']:.4f} "
                  f"| {cells[1]['mean']:.4f} ± {cells[1]['std']:.4f} | {'yes' if ok else 'NO'} |")
    print(f"\n{agree} of {total} agree within the larger standard deviation.")
    print("\nSeed-0 robustness report (A / B):\n\n| model | row | A | B |\n|---|---|---|---|")
    for model in ("baseline", "lr", "pgd_trained"):
        rows = [{r["name"]: r["accuracy"] for r in results[s]["robustness"][model]["rows"]}
                for s in SETUPS]
        for name in rows[0]:
            print(f"| {model} | {name} | {rows[0][name]:.4f} | {rows[1].get(name, float('nan')):.4f} |")


if __name__ == "__main__":
    main()
