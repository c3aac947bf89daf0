"""Time and peak memory of ``to_low_rank`` on keras.applications models, each in a fresh
Python (so the peak is the conversion's own), on the backend given by KERAS_BACKEND.

    KERAS_BACKEND=tensorflow python benchmarks/convert_time.py [--models VGG16 ConvNeXtTiny] [--rank 8]

To compare two commits, run it with ``PYTHONPATH`` on a worktree of the other one (the
script imports whichever ``keras_lowrank`` comes first). The model: ``weights=None``,
32×32×3 inputs, 10 classes, after ``keras.utils.set_random_seed(0)``; the time is
``to_low_rank(model, rank=R)`` alone; the peak is the process's maximum resident set.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import resource, sys, time, warnings
import keras
from keras_lowrank import compression
keras.utils.set_random_seed(0)
model = getattr(keras.applications, sys.argv[1])(weights=None, input_shape=(32, 32, 3), classes=10)
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # layers left dense are said; not timed here
    low = compression.to_low_rank(model, rank=int(sys.argv[2]))
seconds = time.perf_counter() - start
import json, keras_lowrank
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "library": keras_lowrank.__file__}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["VGG16", "ConvNeXtTiny"])
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    print(f"backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}, rank {args.rank}")
    print("| model | to_low_rank | peak memory |\n| --- | --- | --- |")
    for name in args.models:
        done = subprocess.run([sys.executable, "-c", CHILD, name, str(args.rank)], capture_output=True, text=True,
                              check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {result['seconds']:.1f} s | {result['peak_mib']:.0f} MiB |  ({result['library']})")


if __name__ == "__main__":
    main()
