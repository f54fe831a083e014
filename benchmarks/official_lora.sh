#!/usr/bin/env bash
# The official DragDiffusion LoRA trainer, run as it is under diffusers 0.24, beside dragnb's fine-tune, as ONE
# command for the GPU machine (benchmarks/official_lora.py says what it measures):
#
#   benchmarks/official_lora.sh OUT_DIR [official_lora.py options, e.g. --speed cuda_graph or --quick]
#
# Installs .whl/ (today's diffusers, for dragnb) into /tmp/site when diffusers is missing, and .whl024/ (diffusers
# 0.24.0, huggingface_hub 0.19.4, transformers 4.36.2, tokenizers 0.15.0, accelerate 0.25.0) into /tmp/site024,
# which only the official trainer's process reads. Needs .official/ (benchmarks/PARITY.md). Capped at
# OFFICIAL_LORA_TIMEOUT seconds (default 150); the output lands in OUT_DIR/official_lora.json and .log.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/benchmarks/carried_diffusers.sh"
start_prepared_call "[official_lora.py options]" "$@" || exit 2
shift
[ -f "$REPO/.official/utils/lora_utils.py" ] || { echo "no .official/ checkout (benchmarks/PARITY.md)" >&2; exit 3; }
ls "$REPO"/.whl024/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl024/ (benchmarks/PARITY.md)" >&2; exit 3; }
use_carried_diffusers "$REPO" "$PY" || exit 3
if [ ! -d /tmp/site024/diffusers ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site024 \
        "$REPO"/.whl024/*.whl || { echo "installing .whl024/ failed" >&2; exit 3; }
fi
use_this_tree "$REPO"
timeout "${OFFICIAL_LORA_TIMEOUT:-150}" "$PY" "$REPO/benchmarks/official_lora.py" "$OUT_DIR" --official "$REPO/.official" \
    --site024 /tmp/site024 --timeout "$(( ${OFFICIAL_LORA_TIMEOUT:-150} - 60 ))" "$@" 2>&1 \
    | grep -v -e "Warning" -e "deprecate(" -e "_register_pytree_node" | tee "$OUT_DIR/official_lora.log"
exit "${PIPESTATUS[0]}"
