#!/usr/bin/env bash
# make gpu-check: on a machine with an NVIDIA GPU, install the nnabla CUDA extension that
# matches the driver into .venv, then run (a) the tests marked gpu (CPU vs cudnn agreement,
# determinism), (b) the benchmark on the device (--quick), (c) a small end-to-end run; write
# benchmarks/results/gpu-check.json. Without a GPU: one line, exit 0.
# Status: written without access to a GPU; the skip path is what has been run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python

if ! command -v nvidia-smi >/dev/null || [[ -z "$(nvidia-smi -L 2>/dev/null || true)" ]]; then
  echo "gpu-check: no CUDA device found (nvidia-smi missing or lists no GPU); skipped"
  exit 0
fi
cuda="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)"
major="${cuda%%.*}"; minor="${cuda#*.}"
# nnabla-ext-cuda 1.39.0 wheels: CUDA 11.0, 11.6 and 12.0 (a newer driver runs older runtimes).
if (( major >= 12 )); then wheel=nnabla-ext-cuda120
elif (( major == 11 && minor >= 6 )); then wheel=nnabla-ext-cuda116
elif (( major == 11 )); then wheel=nnabla-ext-cuda110
else echo "gpu-check: error: the driver supports CUDA $cuda; nnabla-ext-cuda 1.39.0 needs CUDA 11.0 or later" >&2; exit 2
fi
echo "gpu-check: $(nvidia-smi -L | head -n1); driver CUDA $cuda -> $wheel==1.39.0"
"$PY" -m pip install -q --disable-pip-version-check "$wheel==1.39.0"

res=benchmarks/results
mkdir -p "$res"
t0=$(date +%s)
set +e
"$PY" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$res/gpu-check-tests.log"
tests_rc=${PIPESTATUS[0]}
"$PY" benchmarks/bench_influence.py --quick -di 0 --label gpu-check-bench 2>&1 | tee "$res/gpu-check-bench.log"
bench_rc=${PIPESTATUS[0]}
t1=$(date +%s)
"$PY" eval_sgd_influence.py -o output_gpu_check -ds fashion_mnist --n-train 512 --n-val 256 --n-test 512 \
  -e 2 -nt 1 -r 0 10 100 -di 0 --overwrite 2>&1 | tail -n 20 | tee "$res/gpu-check-e2e.log"
e2e_rc=${PIPESTATUS[0]}
t2=$(date +%s)
set -e
"$PY" - "$res" "$tests_rc" "$bench_rc" "$e2e_rc" "$((t1 - t0))" "$((t2 - t1))" "$(nvidia-smi -L | head -n1)" "$wheel" <<'PYEOF'
import json, os, sys
res, tests_rc, bench_rc, e2e_rc, t_tb, t_e2e, gpu, wheel = sys.argv[1:]
bench = os.path.join(res, "gpu-check-bench.json")
out = {"gpu": gpu, "wheel": wheel, "tests_exit_code": int(tests_rc), "benchmark_exit_code": int(bench_rc),
       "end_to_end_exit_code": int(e2e_rc), "seconds_tests_and_benchmark": int(t_tb), "seconds_end_to_end": int(t_e2e),
       "benchmark": json.load(open(bench)) if os.path.exists(bench) else None}
with open(os.path.join(res, "gpu-check.json"), "w") as f:
    json.dump(out, f, indent=2, sort_keys=True)
print(f"gpu-check: tests rc {tests_rc}, benchmark rc {bench_rc}, end-to-end rc {e2e_rc}; wrote {res}/gpu-check.json")
PYEOF
exit $(( tests_rc || bench_rc || e2e_rc ))
