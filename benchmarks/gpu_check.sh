#!/usr/bin/env bash
# The GPU checks in one run: the CUDA tests (bf16 + channels-last training and inference, DDP with
# SyncBatchNorm) and the faithful-preset throughput benchmark (examples/s, peak memory, MFU,
# loader share; NCHW vs channels-last vs compiled side by side).
#
#   benchmarks/gpu_check.sh --fetch    # here, with network: PyAV and lmdb wheels into .whl/ for
#                                      #   the GPU machine's Python (GPU_PYTHON, default 3.12)
#   benchmarks/gpu_check.sh            # there: installs .whl/ if present, then runs everything
#
# Any machine with CUDA, PyTorch, torchvision, transformers 5, Pillow and pytest will do; the
# wheels cover what such images usually lack. Output lines are also written to $OUT (or
# benchmarks/out/) as gpu_check.log and bench_train.jsonl. Extra arguments go to bench_train.py.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
    pyver="${GPU_PYTHON:-3.12}"
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    av=$("$py" -c 'import av; print(av.__version__)') || exit 1
    lm=$("$py" -c 'import lmdb; print(lmdb.__version__)') || exit 1
    plats=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        plats="$plats --platform $p"
    done
    # shellcheck disable=SC2086
    exec "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        --implementation cp $plats -d .whl "av==$av" "lmdb==$lm"
fi

out="${OUT:-benchmarks/out}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers, av; print("torch", torch.__version__, "transformers",
transformers.__version__, "av", av.__version__, "cuda", torch.cuda.is_available())' || exit 1

status=0
echo "== tests/test_cuda.py"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py || status=1
echo "== benchmarks/bench_train.py --skip-cpu --workers ${GPU_WORKERS:-12} $*"
python3 benchmarks/bench_train.py --skip-cpu --workers "${GPU_WORKERS:-12}" "$@" \
    | tee "$out/bench_train.jsonl" || status=1
exit $status
