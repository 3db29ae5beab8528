#!/usr/bin/env bash
# The one prepared check for a machine with a CUDA GPU (at most ~8 minutes). Run from anywhere:
#
#     bash bench/gpu_check.sh
#
# The repository may arrive without its virtual environment: the script uses the first Python
# whose torch sees a GPU (.venv, then python3), with the repository on PYTHONPATH (bench_gpu.py
# needs only torch, numpy and scipy); wheels in .whl/ (e.g. SimpleITK for the registration
# bench) are installed into a private folder first. Only when no such Python exists does it make
# .venv-gpu and `pip install -e .` (torch==2.13.0: a CUDA build from the index on Linux x86-64).
#
# Steps, each under its own time limit:
#   1. CUDA against CPU on the shipped whole-body model: predictions (float32 and bfloat16
#      autocast) and Grad-CAM agree -> bench/results/gpu_check_equal.json
#   2. bench/bench_gpu.py --device cuda (full UK Biobank grid) -> bench/results/gpu_<device>.json
#   3. the same with --compile (torch.compile) -> bench/results/gpu_<device>_compile.json
#   4. bench/bench_registration_engines.py on CUDA, when it and SimpleITK are there
# Everything lands in bench/results/ (and the log in bench/results/gpu_check.log), and is copied
# to $OUT after each step when OUT is set.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=$ROOT/bench/results
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }

copy_out() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  for f in "$RESULTS"/gpu_*.json "$RESULTS"/registration_engines_cuda.json "$LOG"; do
    [ -f "$f" ] && cp -f "$f" "$OUT/" 2>/dev/null
  done
  return 0
}

echo "== gpu_check $(date -u +%F' '%T) in $ROOT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bodyage-site .whl/*.whl && export PYTHONPATH=/tmp/bodyage-site
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

cuda_python() {
  for py in "$ROOT/.venv/bin/python" python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c \
        "import sys, torch, numpy, scipy; sys.exit(0 if torch.cuda.is_available() else 1)" \
        2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  return 1
}
if ! PY=$(cuda_python); then
  echo "no Python with a CUDA torch: making .venv-gpu (pip install -e .)"
  python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e . || {
    echo "could not install the project"; copy_out; exit 1; }
  PY=$ROOT/.venv-gpu/bin/python
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "torch sees no GPU"; copy_out; exit 1; }
fi
# Without an install, the top-level resources/ folder is not yet the package bodyage_resources
# (setup.py maps it): a link does it.
if ! "$PY" -c "import bodyage_resources" 2>/dev/null; then
  mkdir -p /tmp/bodyage-res && ln -sfn "$ROOT/resources" /tmp/bodyage-res/bodyage_resources
  export PYTHONPATH=/tmp/bodyage-res:$PYTHONPATH
fi
"$PY" -c "import torch, bodyage_core; print('python', __import__('sys').version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
STATUS=0

echo "== 1. CUDA against CPU (shipped model)  [$(elapsed) s]"
timeout 90 "$PY" - <<'EOF' || STATUS=1
import json, time
import numpy as np, torch
from bodyage_core.explain.gradcam import gradcam
from bodyage_core.inference.ensemble import AgeRun
from bodyage_core.resources import shipped_models_dir

src = shipped_models_dir() / "wholebody-synthetic"
rng = np.random.default_rng(0)
cpu = AgeRun(src, device="cpu")
shape = cpu.spec.array_shape
x = np.abs(rng.normal(1, 0.3, (6, *shape))).astype(np.float32)
x[:, :, :, :4] = 0
ref = cpu.predict(x, out_of_fold=False)
out = {"n": len(x), "grid": list(shape)}
for amp in (False, True):
    gpu = AgeRun(src, device="cuda")
    gpu.amp = amp
    got = gpu.predict(x.astype(np.float16), out_of_fold=False, batch_size=4)
    out[f"amp_{amp}"] = {"max_abs_diff_corrected_y": float(np.abs(got.corrected - ref.corrected).max()),
                         "max_abs_diff_sigma_y": float(np.abs(got.sigma - ref.sigma).max())}
gpu = AgeRun(src, device="cuda")
a = gradcam(cpu.load_members(), x[:2], layer="layer3", variant="signed")
b = gradcam(gpu.load_members(), x[:2], layer="layer3", variant="signed", amp=False)
c = gradcam(gpu.load_members(), x[:2], layer="layer3", variant="signed")    # bfloat16
out["gradcam_max_abs_diff_rel"] = float(np.abs(a.mean - b.mean).max() / np.abs(a.mean).max())
out["gradcam_bf16_max_abs_diff_rel"] = float(np.abs(a.mean - c.mean).max()
                                             / np.abs(a.mean).max())
out["gradcam_bf16_corr"] = float(np.corrcoef(a.mean.ravel(), c.mean.ravel())[0, 1])
ok = out["amp_False"]["max_abs_diff_corrected_y"] < 0.01 and \
    out["amp_True"]["max_abs_diff_corrected_y"] < 1.0 and \
    out["gradcam_max_abs_diff_rel"] < 0.01 and out["gradcam_bf16_corr"] > 0.99
out["ok"] = bool(ok)
json.dump(out, open("bench/results/gpu_check_equal.json", "w"), indent=2)
print(json.dumps(out, indent=1))
raise SystemExit(0 if ok else 1)
EOF
copy_out

echo "== 2. bench_gpu.py --device cuda  [$(elapsed) s]"
timeout $(( $(left) > 260 ? 240 : $(left) - 20 )) "$PY" bench/bench_gpu.py --device cuda \
  || STATUS=1
copy_out

if [ "$(left)" -gt 130 ]; then
  echo "== 3. bench_gpu.py --device cuda --compile  [$(elapsed) s]"
  NAME=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '_', \
torch.cuda.get_device_name(0).lower()).strip('_'))")
  timeout $(( $(left) - 100 > 150 ? 150 : $(left) - 100 )) "$PY" bench/bench_gpu.py \
    --device cuda --compile --subjects 32 --train-steps 3 \
    --out "$RESULTS/gpu_${NAME}_compile.json" || echo "(compile run did not finish)"
  copy_out
fi

REG=bench/bench_registration_engines.py
if [ -f "$REG" ] && [ "$(left)" -gt 60 ]; then
  echo "== 4. registration engines on CUDA  [$(elapsed) s]"
  if "$PY" -c "import SimpleITK, nibabel" 2>/dev/null; then
    timeout $(( $(left) - 10 )) "$PY" "$REG" --engines cuda,cuda_batch,cuda_paper \
      --grids default --pairs 4 --out registration_engines_cuda \
      || echo "(registration bench did not finish)"
  else
    echo "SimpleITK / nibabel missing for the registration bench: carry their wheels in .whl/"
  fi
  copy_out
fi
echo "== done in $(elapsed) s, status $STATUS"
copy_out
exit $STATUS
