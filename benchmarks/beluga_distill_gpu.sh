#!/usr/bin/env bash
# Distillation recipe of the embedded identifier, for one CUDA GPU (a few minutes on an H200).
#
# 1. Teachers: TEACHERS networks of the shipped recipe (beluga_train.py defaults), seeds
#    0..TEACHERS-1, trained in parallel.
# 2. Students: single Lite0 networks distilled from the ensemble of all teachers, with
#    the variants below, trained in parallel. Every run validates on the calibration
#    split after each epoch (training.json); none calibrates (ecomarine calibrate does
#    that later, on the original images).
# 3. Every finished model, stored in float16, is packed as OUT/<name>.tar with a summary.
#
# DATA is a copy made by `beluga_data.py --shrink-to` (or the original images);
# a watchdog stops whatever still runs after DEADLINE seconds.
#
# Status: exercised on the CPU in small form only (DEVICE=cpu TEACHERS=2 EPOCHS=1); not
# yet run on a GPU.
#
# Usage: DATA=.gpu/beluga SPLITS=.gpu/splits OUT=runs/distill bash benchmarks/beluga_distill_gpu.sh
set -u
DATA=${DATA:-../shared/data/beluga}
SPLITS=${SPLITS:-runs/beluga}
OUT=${OUT:-runs/distill}
WORK=${WORK:-/tmp/ecomarine-distill}
TEACHERS=${TEACHERS:-6}
EPOCHS=${EPOCHS:-16}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-480}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$OUT"
start=$SECONDS

pids=()
run() {  # run NAME ARGS...: one training in the background, logged to WORK/NAME.log
  local name=$1
  shift
  "$PYTHON" benchmarks/beluga_train.py --data "$DATA" --splits "$SPLITS" --no-calibrate \
    --device "$DEVICE" --workers 2 --epochs "$EPOCHS" --out "$WORK/$name" "$@" \
    >"$WORK/$name.log" 2>&1 &
  pids+=($!)
}

(sleep "$DEADLINE" && pkill -f benchmarks/beluga_train.py) >/dev/null 2>&1 &
watchdog=$!

for ((i = 0; i < TEACHERS; i++)); do run "t$i" --seed "$i"; done
wait "${pids[@]}"
pids=()
teachers=()
for ((i = 0; i < TEACHERS; i++)); do
  [ -f "$WORK/t$i/model.safetensors" ] && teachers+=("$WORK/t$i")
done
phase1=$((SECONDS - start))
echo "teachers done in ${phase1}s: ${teachers[*]}"

left=$((DEADLINE - phase1))
if ((left < 2 * phase1)); then
  # Students take about 1.5 times a teacher's time: shorten them to finish in time.
  EPOCHS=$((EPOCHS * left / (2 * phase1) > 4 ? EPOCHS * left / (2 * phase1) : 4))
  echo "students shortened to $EPOCHS epochs"
fi
if ((${#teachers[@]} >= 2)); then
  run s-class --teacher "${teachers[@]}" --distill-weight 1 --distill-temperature 4
  run s-sim --teacher "${teachers[@]}" --distill-weight 0 --distill-similarity 10
  run s-both --teacher "${teachers[@]}" --distill-weight 1 --distill-temperature 4 \
    --distill-similarity 10
  # Longer runs only when the first phase left time for about 1.5 times its length.
  if ((left > phase1 * 5 / 2)); then
    run s-class24 --epochs $((EPOCHS * 3 / 2)) --teacher "${teachers[@]}" --distill-weight 1 \
      --distill-temperature 4
    run s-both24 --epochs $((EPOCHS * 3 / 2)) --teacher "${teachers[@]}" --distill-weight 1 \
      --distill-temperature 4 --distill-similarity 10
  fi
  wait "${pids[@]}"
fi
pkill -P "$watchdog" 2>/dev/null
kill "$watchdog" 2>/dev/null
echo "all training done in $((SECONDS - start))s"

"$PYTHON" - "$WORK" "$OUT" <<'EOF'
"""Pack each finished model (float16, no checkpoints) and summarise its validation."""
import json, shutil, sys, tarfile
from pathlib import Path

import torch

from ecomarine import Identifier

work, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for folder in sorted(p for p in work.iterdir() if (p / "model.safetensors").is_file()):
    info = json.loads((folder / "training.json").read_text())
    summary[folder.name] = {"validation": info["validation"], "seconds": info["seconds"],
                            "command": info["config"]["command"]}
    if folder.name not in ("t0", "s-class", "s-sim", "s-both", "s-class24", "s-both24"):
        continue  # the transfer takes at most 8 files
    half = work / "half" / folder.name
    model = Identifier.from_pretrained(folder)
    model.save_pretrained(half, model_card=(folder / "README.md").read_text(),
                          dtype=torch.float16)
    shutil.copy(folder / "training.json", half / "training.json")
    with tarfile.open(out / f"{folder.name}.tar", "w") as tar:
        tar.add(half, arcname=folder.name)
(out / "summary.json").write_text(json.dumps(summary, indent=1))
for name, s in summary.items():
    last = s["validation"][-1] if s["validation"] else {}
    print(name, f"{s['seconds']:.0f}s", last)
EOF
tail -n 3 "$WORK"/*.log >"$OUT/logs.txt"
