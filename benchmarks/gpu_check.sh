#!/usr/bin/env bash
# Everything that needs a CUDA GPU, as one script for a short GPU lease: the CUDA-only tests, then the benchmark's
# CUDA section (fp16 512x512 vs diffusers, CUDA graphs on/off, peak VRAM, low-VRAM modes, defaults vs defaults).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs and bench.json land in OUT_DIR (default: $OUT or /tmp/gpu_check)
#
# The machine's own python3 (with a CUDA torch) runs it. Wheels in .whl/ (diffusers, the test oracle, where the
# machine lacks it) are installed first into /tmp/site, without touching the machine's packages; fetch them with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
        exit 1
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import sys, torch, diffusers, transformers, numpy; print(sys.version.split()[0], 'torch', torch.__version__, \
'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, \
torch.cuda.get_device_name(0))" || exit 1
status=0
python3 -m pytest -q -p no:cacheprovider tests/accel/test_cuda_graphs.py tests/engine/test_checkpoint.py \
    tests/engine/test_lora.py -k "cuda or graph" \
    2>&1 | tee "$out/pytest.log" | tail -20
[ "${PIPESTATUS[0]}" = 0 ] || status=1
python3 benchmarks/bench.py --dtypes fp16 --steps 20 --defaults-size 512 --json "$out/bench.json" 2>&1 |
    tee "$out/bench.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
