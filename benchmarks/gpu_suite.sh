#!/usr/bin/env bash
# The GPU checks, in one script, for a borrowed GPU machine (Keras' JAX backend;
# its image has JAX, no TensorFlow). Run from the repository root:
#
#   mkdir -p .whl && pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl keras==3.15.1 namex optree       # once, on a machine with PyPI
#   GPU_SUITE_BENCH=1 bash benchmarks/gpu_suite.sh   # there; results under $OUT (default runs/gpu)
#
# 1. with GPU_SUITE_BENCH=1, issue 21's GPU figures (≈ 5 minutes on an H100), each a
#    script that also runs on a CPU:
#    - PGD-100 through Keras' evaluate against one bare jax.jit of the same attack
#      (benchmarks/pgd_gpu.py --steps 100);
#    - APGD-CE and AutoAttack, ours against the same runs each in a bare jax.jit
#      (benchmarks/autoattack_gpu.py);
#    - VGG16-CIFAR: DLRT's step against the dense network's at > 90 % compression, and
#      the exported model's inference against the dense one's (benchmarks/vgg16_cpu.py),
#      and the same at 224×224, batch 64 (compute-bound; issue 42: DLRT step ≤ 0.7×,
#      exported inference ≤ 1.0× dense; never run on a GPU yet);
#    - the transformer example's step, dense vs low-rank Adam vs DLRT
#      (benchmarks/transformer_step.py; never run on a GPU yet);
#    - the exported VGG16-CIFAR with each layer in its smaller or its faster form, against
#      the dense model, at batch 1 and 128 (benchmarks/export_forms.py: issue 42's
#      exported inference ≤ 1.0× dense on a GPU, never run on one yet);
#    - the all-pairs CKA map of ResNet50's 54 layers against a bare jax.jit
#      (benchmarks/cka_resnet50.py);
#    - where Square L2's graph and the authors' loop part on the GPU, if they do
#      (benchmarks/square_l2_divergence.py; the test of their equality fails there);
#    - whether the GPU's QR / SVD give DLRT's bases NumPy's (LAPACK's) signs, on which its
#      carried second moments depend, and the rank a rank-3 target trains to there
#      (benchmarks/dlrt_signs.py; never run on a GPU yet);
#    with GPU_SUITE_FIRST_CALLS=1 as well (≈ 5 more minutes; never run on a GPU yet):
#    - DLRT's first fit call against Adam's on MobileNetV2 (benchmarks/dlrt_first_step.py;
#      on a GPU alike layers are batched with vectorized_map in the step, on the CPU all
#      layers' augment / truncate run in one NumPy host callback: "dlrt-host" forces the
#      callback on the GPU too, to see whether it pays there);
#    - a report's first call (one shared step) against one PGD-10's
#      (benchmarks/attack_first_call.py --report);
# 2. the backend-neutral test suite on the GPU (cuBLAS/cuSOLVER kernels, TF32 default
#    for the code that must set its own precision), tests needing TensorFlow skipped,
#    for at most GPU_SUITE_TEST_SECONDS (default 170; -v, so a run cut short still shows
#    each finished test). GPU_SUITE_TESTS=0 skips it.
# On an H100 the benchmarks took 5 minutes and the tests were cut at their 170 s (each part
# has its own cap: 10 minutes at most in all).
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
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())"
  date -u; } | tee "$OUT/machine.txt"   # (the machine's copy has no up-to-date .git: note the commit by hand)
status=0
bench() {  # bench NAME SECONDS command...: one benchmark, its log under $OUT
    local name=$1 seconds=$2; shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -v "^WARNING\|^I0000\|^E0000\|^W0000" "$OUT/$name.log" | tail -n 40
    echo "== $name: rc $rc, $((SECONDS - start)) s"
    [ "$rc" = 0 ] || status=1
}
if [ "${GPU_SUITE_BENCH:-0}" = 1 ]; then
    bench pgd100 90 python3 benchmarks/pgd_gpu.py --steps 100 --repeats 3 --no-cpu --models 2
    bench autoattack 100 python3 benchmarks/autoattack_gpu.py --examples 1000 --batch 500
    bench vgg16 120 python3 benchmarks/vgg16_cpu.py
    bench vgg16_224 240 python3 benchmarks/vgg16_cpu.py --image-size 224 --batch 64 --cycles 1
    bench transformer 120 python3 benchmarks/transformer_step.py
    bench export_forms 120 python3 benchmarks/export_forms.py --models vgg16 --rounds 5
    bench cka_resnet50 120 python3 benchmarks/cka_resnet50.py --examples 1024
    bench square_l2 120 python3 benchmarks/square_l2_divergence.py
    bench dlrt_signs 90 python3 benchmarks/dlrt_signs.py
fi
if [ "${GPU_SUITE_FIRST_CALLS:-0}" = 1 ]; then
    bench dlrt_first 200 python3 benchmarks/dlrt_first_step.py --models MobileNetV2 --integrator host
    bench report_first 120 python3 benchmarks/attack_first_call.py --report --backend jax --models mobilenetv2
fi
if [ "${GPU_SUITE_TESTS:-1}" = 1 ]; then
    timeout "${GPU_SUITE_TEST_SECONDS:-170}" python3 -m pytest -v -n "${GPU_SUITE_WORKERS:-8}" \
        -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
    rc=$?
    grep -c " PASSED" "$OUT/tests.log" | sed 's/^/passed (lines): /'
    grep " FAILED\|^FAILED\|^ERROR" "$OUT/tests.log" | head -n 20
    tail -n 3 "$OUT/tests.log"
    echo "== tests: rc $rc"
    [ "$rc" = 0 ] || status=1
fi
exit "$status"
