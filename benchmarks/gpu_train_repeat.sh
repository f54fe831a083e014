#!/usr/bin/env bash
# Is GPU training reproducible from a seed? benchmarks/train_repeat.py as ONE command for the GPU machine:
#
#   benchmarks/gpu_train_repeat.sh OUT_DIR [train_repeat.py options] [-- dragnb.demo.train options]
#   e.g.  bash benchmarks/gpu_train_repeat.sh "$OUT/rep" --steps 300 -- --cuda-graph --deterministic
#
# Installs the carried wheels (.whl/) when diffusers is missing, runs the two trainings in their own processes and
# leaves OUT_DIR/repeat.json, run1.log and run2.log (the weights stay on the machine: compared there, not brought
# back). Capped at REPEAT_TIMEOUT seconds (default 240).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/benchmarks/carried_diffusers.sh"
start_prepared_call "[train_repeat.py options] [-- training options]" "$@" || exit 2
shift
use_carried_diffusers "$REPO" "$PY" || exit 3
use_this_tree "$REPO"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dragnb_repeat.XXXXXX")
timeout "${REPEAT_TIMEOUT:-240}" "$PY" "$REPO/benchmarks/train_repeat.py" "$WORK" "$@" 2>&1 | tee "$OUT_DIR/repeat.log"
rc=${PIPESTATUS[0]}
cp "$WORK"/repeat.json "$WORK"/run*.log "$OUT_DIR/" 2>/dev/null
exit "$rc"
