#!/usr/bin/env bash
# SD-1.5-size timings of dragnb (and, given a DragDiffusion checkout, of the official code side by side) as ONE
# command for the GPU machine: installs the wheels carried in .whl/ when diffusers is missing, then runs
# benchmarks/gpu_sd_timings.py, which writes gpu_sd_timings.json and gpu_sd_timings.txt into OUT_DIR.
#
#   benchmarks/gpu_sd_timings.sh OUT_DIR [--official DIR] [--quick] [other gpu_sd_timings.py options]
#
# --official defaults to .official/ in the repository root when that folder exists (see benchmarks/PARITY.md).
# --quick is the CPU smoke run (tiny model, 64 px, 3 drag steps, 2 LoRA steps; well under a minute).
# The whole run is capped at GPU_SD_TIMEOUT seconds (default 480) so a device call keeps its output; part 3 (the
# speed options) starts no row likely to end within 30 s of that cap (--deadline-s, unless given).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/benchmarks/carried_diffusers.sh"
start_prepared_call "[--official DIR] [--quick] [...]" "$@" || exit 2
shift
use_carried_diffusers "$REPO" "$PY" || exit 3
use_this_tree "$REPO"

ARGS=("$@")
if [ -d "$REPO/.official" ] && [[ " $* " != *" --official "* ]] && [[ " $* " != *" --no-official "* ]]; then
    ARGS+=(--official "$REPO/.official")
fi
if [[ " $* " != *" --deadline-s "* ]]; then
    ARGS+=(--deadline-s "$(( ${GPU_SD_TIMEOUT:-480} - 30 ))")
fi
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'diffusers', diffusers.__version__)" 2>&1 | tail -1
timeout "${GPU_SD_TIMEOUT:-480}" "$PY" "$REPO/benchmarks/gpu_sd_timings.py" "$OUT_DIR" "${ARGS[@]}" 2>&1 \
    | grep -v -e "requires torchvision" -e "Warning" -e "deprecate(" -e "GradScaler()" \
    -e "super().__init__(" -e "with torch.autocast" | tee "$OUT_DIR/gpu_sd_timings.log"
exit "${PIPESTATUS[0]}"
