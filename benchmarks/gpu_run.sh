#!/usr/bin/env bash
# Issue 14's GPU measurements, for the device machine (run from the repository root, .whl/ beside it):
#   bash benchmarks/gpu_run.sh fit     GPU tests + benchmarks/gpu_fit.py      (about 6 minutes on an H200)
#   bash benchmarks/gpu_run.sh data    benchmarks/gpu_data.py                 (about 3.5 minutes)
#   bash benchmarks/gpu_run.sh         both, one after the other
# Installs the wheels the machine lacks (hydra-core, omegaconf, antlr4, albumentations and their
# dependencies; see the README's "GPU speed" section for how .whl/ is made) into /tmp/site, then runs
# the GPU tests, benchmarks/gpu_fit.py and benchmarks/gpu_data.py, each under its own time limit.
# Results and logs go to $OUT (default ./gpu_out): gpu_fit.json, gpu_data.json, *.log, env.txt.
set -u
PART="${1:-all}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

stamp "installing wheels"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl > "$OUT/install.log" 2>&1; then
  echo "pip failed (see install.log); unpacking the wheels instead"  # a wheel is a zip of its site-packages files
  mkdir -p /tmp/site && for wheel in .whl/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site || exit 1; done
fi
export PYTHONPATH="/tmp/site:$PWD"
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "cpus: $(nproc)"; echo "cc: $(command -v cc gcc | head -1)"; df -h /dev/shm /tmp | tail -2; free -g | head -2
  python3 -c "import torch, torchvision, pytorch_lightning as pl, timm, hydra, albumentations as A; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, \
'lightning', pl.__version__, 'timm', timm.__version__, 'hydra', hydra.__version__, 'albumentations', A.__version__)"
  python3 -c "import transferkit.cli.app, transferkit.commands.fit, transferkit.data.transforms; print('transferkit imports ok')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$PART" != data ]; then
  stamp "GPU tests"
  timeout 70 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_speed.py > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest -m gpu: exit $?"; tail -3 "$OUT/pytest_gpu.log"

  stamp "gpu_fit.py"  # eager, frozen + feature cache, eager without the loss guard, compiled (then convnext)
  timeout 315 python3 benchmarks/gpu_fit.py --budget 300 --output "$OUT/gpu_fit.json" > "$OUT/gpu_fit.log" 2>&1
  echo "gpu_fit.py: exit $?"; grep -E "img/s|ratio|failed|Error" "$OUT/gpu_fit.log" | grep -v Warning | tail -20
fi

if [ "$PART" != fit ]; then
  stamp "gpu_data.py"  # synthetic (model-bound), decode=gpu, the decoded-image cache; 75 s each at most
  timeout 200 python3 benchmarks/gpu_data.py --budget 190 --variants synthetic decode_gpu decode_cpu_cache \
    --output "$OUT/gpu_data.json" > "$OUT/gpu_data.log" 2>&1
  echo "gpu_data.py: exit $?"; grep -E "^(synthetic|decode|folder|\{)|Error|Thread|File" "$OUT/gpu_data.log" | tail -30
fi

stamp "summary"
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("gpu_fit.json", "gpu_data.json"):
    path = out / name
    if not path.is_file():
        print(name, "missing"); continue
    r = json.loads(path.read_text())
    if name == "gpu_fit.json":
        print("device:", r["versions"].get("device"), "| skipped:", r.get("skipped"))
        for c in r["cases"]:
            if "error" in c:
                print(f"  {c['case']}: ERROR {c['error'][:200]}"); continue
            if "hand_loop" in c:
                print(f"  {c['case']}: loop {c['hand_loop']['img_per_s']:.0f} img/s, fit {c['fit']['img_per_s'] or 0:.0f}"
                      f" img/s, ratio {c['ratio'] or 0:.3f}; whole {c['hand_loop']['wall_seconds']} s vs"
                      f" {c['fit']['wall_seconds']} s")
            else:
                print(f"  {c['case']}: forward {c['forward_pass']['seconds']} s over {c['train_images']} images;"
                      f" fit loop {c['fit']['fit_loop_seconds']} s (ratio {c['ratio']:.2f}), whole"
                      f" {c['fit']['wall_seconds']} s")
        print("  " + ", ".join(f"{k}={r.get(k)}" for k in ("fit_ratio", "compiled_ratio", "convnext_fit_ratio",
                                                           "convnext_compiled_ratio", "frozen_cache_ratio",
                                                           "no_loss_guard_ratio")))
    else:
        for k, v in r["variants"].items():
            print(f"  {k}: {v.get('img_per_s') or 0:.0f} img/s, ratio {v.get('ratio_to_model_bound')},"
                  f" whole {v.get('wall_seconds')} s {v.get('error', '')[:200]}")
        print(f"  folder_ratio={r.get('folder_ratio')} best={r.get('best_input_path')} skipped={r.get('skipped')}")
EOF
stamp "done"
