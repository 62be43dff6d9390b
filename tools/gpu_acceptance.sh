#!/usr/bin/env bash
# GPU acceptance: everything that needs an NVIDIA GPU, in one go, in under 8 minutes.
#
#   tools/gpu_acceptance.sh             set up, run every step, print one summary
#   tools/gpu_acceptance.sh --dry-run   list the steps and their commands; run nothing
#   ONLY="setup checkpoint throughput" tools/gpu_acceptance.sh   run only the steps named
#   tools/gpu_acceptance.sh --fetch-wheels
#       (on a machine with PyPI, before going to a GPU machine without it) download as Python
#       3.12 wheels, into .whl/, the packages a GPU image with torch, Triton and transformers
#       usually lacks (the server's); setup installs from .whl/ when the folder exists.
#
# Steps: a virtualenv with a CUDA torch; the CUDA-marked tests and the Triton kernel tests,
# compiled (`pytest -m "cuda or kernels"`); tools/bench_paged_decode.py (bandwidth against the
# GPU's peak); a random-weight checkpoint of Qwen2.5-0.5B's exact config (made with
# transformers, no download); `minillm bench throughput` and `minillm bench serve` on it.
# Each step has a time limit, a failed step does not stop the others, and the summary names
# every step's result. Logs and JSON results go to $RESULTS (default: $OUT where that is set,
# else gpu-acceptance/).
#
# The virtualenv ($GPU_VENV, default .venv-gpu): where the machine's python3 already has a
# CUDA torch (GPU images ship one, with Triton and transformers), the venv reuses it through a
# .pth file and installs only minillm and what is missing; otherwise it installs torch==2.13.0
# from PyPI, whose Linux x86_64 wheel is the CUDA 13 build (with triton; needs driver >= 580).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-run}
VENV=${GPU_VENV:-.venv-gpu}
PY=$VENV/bin/python
RESULTS=${RESULTS:-${OUT:-gpu-acceptance}}
CHECKPOINT=${CHECKPOINT:-$HOME/.cache/minillm/checkpoints/qwen2.5-0.5b}
WHEELS=.whl
# The server's packages, missing from GPU images that ship torch, Triton and transformers.
SERVER_PACKAGES="fastapi starlette pydantic pydantic-core annotated-types typing-inspection
typing-extensions annotated-doc opentelemetry-api uvicorn pyzmq setuptools"

# name | time limit in seconds (0: none; setup takes seconds where the image has a CUDA torch,
# minutes where torch comes from PyPI) | command
STEPS=(
  "setup|0|setup_venv"
  "environment|20|nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader && \$PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
  "cuda-tests|180|\$PY -m pytest tests/test_cuda.py tests/test_kernels.py tests/test_kernels_e2e.py -m 'cuda or kernels' -q -p no:cacheprovider"
  "paged-decode|60|\$PY tools/bench_paged_decode.py --batch 1,64 --context 1024,4096 && \$PY tools/bench_paged_decode.py --dtype bf16 --batch 64 --context 4096 --skip-torch"
  "checkpoint|90|\$PY -c 'from minillm.bench.peers import shaped_checkpoint; print(shaped_checkpoint(\"qwen2.5-0.5b\", \"$CHECKPOINT\"))'"
  "throughput|60|\$VENV/bin/minillm bench throughput --model $CHECKPOINT --dtype float32 --num-requests 256 --min-len 16 --max-len 64 --hf-sequential-requests 1 --hf-static-requests 4 --hf-batch-size 4 --output-json \$RESULTS/throughput.json"
  "serve|60|\$VENV/bin/minillm bench serve --model $CHECKPOINT --dtype bfloat16 --num-prompts 256 --random-input-len 128 --random-output-len 128 --max-concurrency 64 --save-result --result-dir \$RESULTS --result-filename serve.json"
)

setup_venv() {
  if [ -x "$PY" ] && "$PY" -c 'import torch, minillm; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "reusing $VENV"; return
  fi
  python3 -m venv "$VENV" || python3 -m venv --without-pip "$VENV" || return 1
  local pip=("$PY" -m pip)
  "$PY" -m pip --version >/dev/null 2>&1 || pip=(python3 -m pip --python "$PY")
  if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "reusing the CUDA torch of $(command -v python3)"
    local site
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # addsitedir, not a bare path: the image's own .pth files (namespace packages) apply too
    python3 -c 'import site; print("\n".join(f"import site; site.addsitedir({d!r})"
                                          for d in site.getsitepackages()))' > "$site/host-python.pth"
  else
    "${pip[@]}" install --quiet torch==2.13.0 || return 1
  fi
  if [ -d "$WHEELS" ]; then
    # No registry: the carried wheels and minillm go in as they are (--no-deps); the rest of
    # minillm's needs come from the image, and the import below says what is missing.
    "${pip[@]}" install --quiet --no-index --no-deps "$WHEELS"/*.whl || return 1
    "${pip[@]}" install --quiet --no-index --no-deps --no-build-isolation -e . || return 1
  else
    "${pip[@]}" install --quiet 'setuptools>=68' || return 1
    "${pip[@]}" install --quiet --no-build-isolation -e . pytest aiohttp || return 1
  fi
  "$PY" -c 'import minillm.entrypoints.openai.api_server, minillm_kernels, pytest, aiohttp'
}

fetch_wheels() {
  local versions
  versions=$(.venv/bin/python -c 'import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $SERVER_PACKAGES) || return 1
  mkdir -p "$WHEELS"
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WHEELS" $versions && ls "$WHEELS"
}

summary() {
  "$PY" - "$RESULTS" "$@" <<'EOF'
import json, re, sys
from pathlib import Path

results, rows = Path(sys.argv[1]), [r.split("|") for r in sys.argv[2:]]
log = (results / "acceptance.log").read_text(errors="replace")
lines = ["# GPU acceptance", "", "| step | result | seconds |", "| --- | --- | --- |"]
lines += [f"| {name} | {status} | {seconds} |" for name, status, seconds in rows]
lines.append("")
tests = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", log, re.M)
if tests:
    lines.append(f"- tests: {tests[-1]}")
# bench_paged_decode runs twice: fp16 (with the torch backend beside it), then bf16
for dtype, row in zip(["fp16", "bf16"], re.findall(r"^\| 64 \| 4096 \|.*$", log, re.M)):
    cells = [c.strip() for c in row.strip("|").split("|")]
    lines.append(f"- paged decode {dtype}, batch 64 x 4096 tokens: {cells[4]} GB/s, {cells[5]} "
                 f"of peak ({cells[3]} us, {cells[2]} splits)")
if (results / "throughput.json").exists():
    t = json.loads((results / "throughput.json").read_text())
    lines.append(f"- bench throughput (float32, {t['requests']} requests): minillm "
                 f"{t['minillm_tokens_per_s']:.0f} output tok/s, engine efficiency "
                 f"{t['engine_efficiency']:.2f} (its transformers runs are on the CPU)")
if (results / "serve.json").exists():
    s = json.loads((results / "serve.json").read_text())
    lines.append(f"- bench serve (bfloat16, {s['completed']} requests, concurrency "
                 f"{s['max_concurrency']}): {s['output_throughput']:.0f} output tok/s, median "
                 f"TTFT {s['median_ttft_ms']:.1f} ms, median TPOT {s['median_tpot_ms']:.2f} ms, "
                 f"{s['failed']} failed")
text = "\n".join(lines)
(results / "summary.md").write_text(text + "\n")
print(text)
EOF
}

case "$MODE" in
  --dry-run)
    for step in "${STEPS[@]}"; do
      IFS='|' read -r name limit command <<<"$step"
      printf '%-13s %4ss  %s\n' "$name" "$limit" "$command"
    done
    exit 0 ;;
  --fetch-wheels) fetch_wheels; exit ;;
  run) ;;
  *) echo "usage: $0 [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

if ! nvidia-smi >/dev/null 2>&1; then
  echo "gpu_acceptance: no NVIDIA GPU found (nvidia-smi failed); --dry-run lists the steps" >&2
  exit 1
fi
mkdir -p "$RESULTS"
LOG=$RESULTS/acceptance.log
: > "$LOG"
export -f setup_venv
export PYTHONUNBUFFERED=1 PY VENV RESULTS WHEELS
unset TRITON_INTERPRET
ROWS=() FAILED=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  echo "=== $name (limit ${limit}s): $command" | tee -a "$LOG"
  start=$SECONDS
  timeout "$limit" bash -c "$command" 2>&1 | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  case $code in 0) status=ok ;; 124) status="timed out" ;; *) status="failed ($code)" ;; esac
  [ "$code" = 0 ] || FAILED=1
  ROWS+=("$name|$status|$((SECONDS - start))")
  if [ "$name" = setup ] && [ "$code" != 0 ]; then break; fi
done
echo
[ -x "$PY" ] && summary "${ROWS[@]}" || printf '%s\n' "${ROWS[@]}"
exit $FAILED
