#!/usr/bin/env bash
# The GPU check of issue 10, in one device call: profile the random-init llama-2-7b in fp16 on the GPU,
# check the profile against its physical floor, then validate every policy, sim against the real runner.
#
#   Here, once (downloads simpy and polars, which the GPU image lacks, for its Python 3.12, into .whl/; 55 MB,
#   so that with the 7 MB tree it stays under the 64 MiB a call carries; plotly is left out, so validate
#   writes validation.json but no validation.html there):
#       bash benchmarks/gpu_check.sh wheels
#   On the device machine (the device tool's `run`, carry [".whl"], timeout_s 570):
#       bash benchmarks/gpu_check.sh run
#   Dry run of the same pipeline on this CPU (no wheels, the project's venv; about 2 minutes):
#       PYTHON=.venv/bin/python MODEL=tiny-llama DEVICE=cpu DTYPE=fp32 LENGTH_SCALE=0.25 NUM_REQUESTS=40 \
#           OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh run
#
# Everything lands in $OUT (on the device: what comes back) as at most 6 files: log.txt, profile.json,
# floor.txt, validate.txt (the table and verdicts of benchmarks/validate_policies.py), summary.json and
# val.tar.gz (every run's directory). A profile already in $OUT/profile.json, or PROFILE=path, is reused,
# so a second call can validate only. Settings (environment): MODEL (llama-2-7b), DEVICE (cuda), DTYPE
# (fp16), LENGTH_SCALE (1: azure-conv fits a 4,096-token context), NUM_REQUESTS (150), REAL_RUNS (1: a
# dedicated GPU is not a shared CPU), POLICIES (all nine), PROFILE_TIMEOUT (240 s), VALIDATE_TIMEOUT (300 s).
# On a GPU the verdicts use the profile as measured (--interleave 0 --probe-every 0): the interleaved grid
# and the probe exist for a shared CPU whose speed drifts, and would cost GPU minutes here.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}

if [ "$MODE" = wheels ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    pins=$(${PY} - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("simpy", "polars", "polars-runtime-32")))
EOF
)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl $pins
    du -sh .whl
    exit 0
fi
[ "$MODE" = run ] || { echo "usage: $0 wheels|run" >&2; exit 2; }

OUT=${OUT:-results/gpu-check}
MODEL=${MODEL:-llama-2-7b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-fp16}
LENGTH_SCALE=${LENGTH_SCALE:-1}
NUM_REQUESTS=${NUM_REQUESTS:-150}
REAL_RUNS=${REAL_RUNS:-1}
POLICIES=${POLICIES:-static continuous vllm-v0 sarathi length-grouped sjf srpt syncintellects syncintellects-continuous}
PROFILE=${PROFILE:-$OUT/profile.json}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "== $(date -u +%FT%TZ) gpu_check: model $MODEL, device $DEVICE, dtype $DTYPE, length x $LENGTH_SCALE, $NUM_REQUESTS requests"
"$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
EOF

if [ -f "$PROFILE" ]; then
    echo "== profile: reusing $PROFILE"
else
    echo "== profile"
    start=$(date +%s)
    timeout "${PROFILE_TIMEOUT:-240}" "$PY" -m syncintellects.cli profile --model "$MODEL" --device "$DEVICE" \
        --dtype "$DTYPE" --out "$PROFILE" --quiet
    echo "profile took $(( $(date +%s) - start )) s"
fi

echo "== floor: a batch-1 decode step cannot beat reading the weights once"
"$PY" - "$PROFILE" <<'EOF' | tee "$OUT/floor.txt"
import json, sys
from simulator.cost_model import CostModel
from simulator.profile import load_profile
prof = load_profile(sys.argv[1])
data = json.load(open(sys.argv[1]))
cost = CostModel(prof)
step_ms = cost.step_s(1, 128) * 1e3
weights = data["memory"]["weights_bytes"]
gpu = data["gpu"]["name"]
bandwidth = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.039e12}  # HBM bytes/s (SXM figures)
bw = next((v for k, v in bandwidth.items() if k in gpu), None)
print(f"{gpu}: batch-1 decode step at 128 tokens of context {step_ms:.2f} ms; weights {weights / 1e9:.2f} GB")
if bw:
    floor = weights / bw * 1e3
    print(f"floor (weights / {bw / 1e12:.2f} TB/s) {floor:.2f} ms: step / floor = {step_ms / floor:.2f}"
          + ("  BELOW THE FLOOR: the timer is not synchronised with the device" if step_ms < floor else ""))
EOF

echo "== validate: $POLICIES"
start=$(date +%s)
status=0
timeout "${VALIDATE_TIMEOUT:-300}" "$PY" benchmarks/validate_policies.py --profile "$PROFILE" --out "$OUT/val" \
    --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --length-scale "$LENGTH_SCALE" \
    --num-requests "$NUM_REQUESTS" --runs 1 --real-runs "$REAL_RUNS" --policies $POLICIES \
    --extra=--interleave=0 --extra=--probe-every=0 > "$OUT/validate.txt" || status=$?
cat "$OUT/validate.txt"
echo "validation took $(( $(date +%s) - start )) s, exit $status"
[ -f "$OUT/val/summary.json" ] && cp "$OUT/val/summary.json" "$OUT/summary.json"
tar czf "$OUT/val.tar.gz" --exclude=validation.html -C "$OUT" val && rm -rf "$OUT/val"  # the pages are 4.7 MB each
ls -la "$OUT"
exit "$status"
