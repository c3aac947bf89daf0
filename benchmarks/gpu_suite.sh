#!/usr/bin/env bash
# The GPU checks, in one script, for a borrowed GPU machine (Keras' JAX backend;
# its image has JAX, no TensorFlow). Run from the repository root:
#
#   mkdir -p .whl && pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl keras==3.15.1 namex optree       # once, on a machine with PyPI
#   bash benchmarks/gpu_suite.sh                 # there; results under $OUT (default runs/gpu)
#
# 1. the backend-neutral test suite on the GPU (cuBLAS/cuSOLVER kernels, TF32 default
#    for the code that must set its own precision), tests needing TensorFlow skipped;
# 2. optionally (GPU_SUITE_BENCH=1) the PGD and AutoAttack benchmarks, benchmarks/pgd_gpu.py
#    and benchmarks/autoattack_gpu.py, and VGG16's DLRT step and exported inference against
#    the dense network's (benchmarks/vgg16_cpu.py, which runs on the device Keras uses).
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
# several test workers share the GPU: allocate as needed, not 75 % each
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())"
  date -u; } | tee "$OUT/machine.txt"   # (the machine's copy has no up-to-date .git: note the commit by hand)
timeout "${GPU_SUITE_TEST_SECONDS:-420}" python3 -m pytest -q -n "${GPU_SUITE_WORKERS:-8}" \
    -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log" | tail -n 40
status=${PIPESTATUS[0]}
if [ "${GPU_SUITE_BENCH:-0}" = 1 ]; then
    timeout 240 python3 benchmarks/pgd_gpu.py --repeats 3 2>&1 | tee "$OUT/pgd_gpu.log" | tail -n 20
    timeout 180 python3 benchmarks/autoattack_gpu.py 2>&1 | tee "$OUT/autoattack_gpu.log" | tail -n 30
    timeout 240 python3 benchmarks/vgg16_cpu.py 2>&1 | tee "$OUT/vgg16.log" | tail -n 20
fi
exit "$status"
