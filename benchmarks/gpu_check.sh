#!/usr/bin/env bash
# The GPU checks in one run: the CUDA tests (bf16 + channels-last training and inference, DDP with
# SyncBatchNorm) and the training benchmark (faithful as it trains: fp32, TF32 off; then bf16 and
# channels-last; examples/s, peak memory, MFU, loader share).
#
#   benchmarks/gpu_check.sh --fetch      # here, with network: PyAV and lmdb wheels into .whl/
#                                        #   for each Python in GPU_PYTHON (default "3.12")
#   benchmarks/gpu_check.sh              # there: installs the wheels its python3 lacks, stops
#                                        #   with one line unless torch sees a GPU, runs it all
#   benchmarks/gpu_check.sh --data-only  # anywhere: installs as above, builds the tests' and the
#                                        #   benchmark's data, stops (the setup, rehearsed on a CPU)
#
# The GPU machine's python3 must hold torch (with CUDA), torchvision, transformers 5, Pillow,
# numpy and pytest; the wheels bring PyAV and lmdb. The data are encoded with the `improved`
# video preset (PyAV and Pillow), so no OpenCV is needed. Output lines are also written to $OUT
# (or benchmarks/out/) as gpu_check.log and bench_train.jsonl. Extra arguments go to
# bench_train.py.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    av=$("$py" -c 'import av; print(av.__version__)') || exit 1
    lm=$("$py" -c 'import lmdb; print(lmdb.__version__)') || exit 1
    plats=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        plats="$plats --platform $p"
    done
    for pyver in ${GPU_PYTHON:-3.12}; do
        # shellcheck disable=SC2086
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
            --implementation cp $plats -d .whl "av==$av" "lmdb==$lm" || exit 1
    done
    ls .whl
    exit 0
fi
data_only=0
if [ "${1:-}" = "--data-only" ]; then
    data_only=1
    shift
fi

out="${OUT:-benchmarks/out}"
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# PyAV and lmdb from .whl/, each only where python3 lacks it, and only as a wheel built for this
# very Python (pip picks it by its tags); where there is none, one line says what to fetch.
missing=""
for mod in av lmdb; do
    python3 -c "import $mod" 2>/dev/null || missing="$missing $mod"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --find-links .whl --target /tmp/gpu_check_site $missing >/tmp/gpu_check_pip.log 2>&1
    then
        ver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        have=$(cd .whl 2>/dev/null && compgen -G "*.whl" | xargs)
        echo "gpu_check: python3 ($ver) lacks$missing, and .whl/ has no such wheel for Python" \
            "$ver (${have:-no wheels}; pip: /tmp/gpu_check_pip.log): run 'GPU_PYTHON=$ver" \
            "benchmarks/gpu_check.sh --fetch' first"
        exit 1
    fi
    export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
fi

if [ "$data_only" = 1 ]; then
    python3 - <<'EOF' || exit 1
"""The data of tests/test_cuda.py and of bench_train.py, built as they build them."""
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = ["tests", "benchmarks"]
import bench_train  # noqa: E402
import test_cuda  # noqa: E402

t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    tests = test_cuda.make_cuda_data(Path(tmp) / "tests")
    bench = bench_train.make_data(Path(tmp) / "bench", 8, 60, 224)
    n = sum(1 for _ in open(tests["data_dir"] / "train.jsonl"))
    m = sum(1 for _ in open(bench["data_dir"] / "train.jsonl"))
print(f"gpu_check: data setup ok ({n} test and {m} benchmark training questions, "
      f"{time.perf_counter() - t0:.0f} s)")
EOF
    exit 0
fi

python3 - <<'EOF' || exit 1
import sys

try:
    import torch
except ImportError as e:
    sys.exit(f"gpu_check: {sys.executable} cannot import torch ({e})")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no GPU visible: torch {torch.__version__} (CUDA build "
             f"{torch.version.cuda or 'none'}) sees no CUDA device; nothing checked")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers, av; print("torch", torch.__version__, "transformers",
transformers.__version__, "av", av.__version__, "cuda", torch.cuda.is_available())' || exit 1

status=0
echo "== tests/test_cuda.py"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py || status=1
echo "== benchmarks/bench_train.py --skip-cpu $*"
python3 benchmarks/bench_train.py --skip-cpu "$@" | tee "$out/bench_train.jsonl" || status=1
exit $status
