#!/usr/bin/env bash
# Train the demo model on a GPU machine in one prepared call, and bring everything back in <= 8 files.
#
#   bash benchmarks/gpu_train.sh OUT_DIR [MINUTES]          # train, measure, pack into OUT_DIR
#   bash benchmarks/gpu_train.sh --unpack OUT_DIR WEIGHTS   # here, afterwards: rebuild the weights folder
#
# MINUTES (default 6.5) is the training loop's wall-clock budget; the whole call (wheel install, imports,
# training, figures, quality subset, packing) ends in about MINUTES + 2.5 minutes, and the quality subset is
# cut to fit DEADLINE_S (default 570 s after the start). Settings by environment variable (defaults in brackets):
#   ARCH [f2l4]  BATCH [256]  LR [3e-4]  WARMUP [500]  MIN_SNR [5]  T_FOCUS [700]  T_FOCUS_PROB [0.3]
#   SEED [0]  TRAIN_ARGS [] (more dragnb.demo.train options, e.g. "--compile")  QUALITY_N [32] (0: skip)
#   CUDA_GRAPH [1: --cuda-graph when CUDA is there; 0: eager steps]
#   QUALITY_WORKERS [8]  QUALITY_THREADS [2 x workers]  QUALITY_ARGS []  DEADLINE_S [570]  DEVICE [cuda if available]  THREADS [8]
# The quality subset (benchmarks/bench_quality.py, the full method on QUALITY_N held-out cases) runs on the
# machine's CPU cores in float32, as a laptop would run the model, in QUALITY_WORKERS processes.
#
# What lands in OUT_DIR (at most 8 files, each under 16 MiB):
#   unet/diffusion_pytorch_model-0000k-of-0000n.safetensors   the EMA weights' shards (fp16, < 14 MB each)
#   weights_rest.tar     the rest of the weights folder (configs, shard index, prompt embedding, dragnb_demo.json)
#   results.tar          figures/ (training curve, loss.csv, samples, round trip, summary.json), logs, quality json
#   summary.json         training record + x0 PSNR per level + shape fidelity + quality summary
#   samples_from_noise.png   a first look (also in results.tar)
# (4 files + the shards: up to 4 shards, 56 MB of fp16 weights, fit the 8 that come back.)
# Diffusers is not installed on the GPU machine: wheels carried in .whl/ are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--unpack" ]; then
    FROM=${2:?usage: gpu_train.sh --unpack OUT_DIR WEIGHTS_DIR}; TO=${3:?usage: gpu_train.sh --unpack OUT_DIR WEIGHTS_DIR}
    mkdir -p "$TO"
    tar -xf "$FROM/weights_rest.tar" -C "$TO" && cp "$FROM"/unet/*.safetensors "$TO/unet/" || exit 1
    mkdir -p "$TO/../$(basename "$TO")_results" && tar -xf "$FROM/results.tar" -C "$TO/../$(basename "$TO")_results"
    echo "weights in $TO (load_model('$TO')); figures and logs in $TO/../$(basename "$TO")_results"
    exit 0
fi

OUT=${1:?usage: gpu_train.sh OUT_DIR [MINUTES]}
MINUTES=${2:-6.5}
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-570}))
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dragnb_gpu.XXXXXX")
LOG=$WORK/logs; mkdir -p "$LOG"
echo "gpu_train: out $OUT, work $WORK, budget $MINUTES min, deadline in ${DEADLINE_S:-570} s"

# 1. diffusers (and what it needs that the machine lacks) from the carried wheels; dragnb from this tree
if ! $PY -c "import diffusers" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "gpu_train: installing .whl/ failed"; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "gpu_train: diffusers is missing and no .whl/ was carried (see benchmarks/README.md)"; exit 1
    fi
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, diffusers, dragnb.demo.world_torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)" \
    || { echo "gpu_train: imports failed"; exit 1; }
echo "gpu_train: ready after $(( $(date +%s) - START )) s"

pack() {   # weights shards + the rest as tars + summary: <= 8 files in $OUT
    local W=$WORK/weights
    [ -f "$W/dragnb_demo.json" ] || { echo "gpu_train: no weights written"; return 1; }
    rm -rf "$OUT/unet"; mkdir -p "$OUT/unet"
    cp "$W"/unet/*.safetensors "$OUT/unet/"
    (cd "$W" && tar -cf "$OUT/weights_rest.tar" --exclude='*.safetensors' unet scheduler dragnb_demo.json \
        && tar -rf "$OUT/weights_rest.tar" prompt_embeds.safetensors)
    (cd "$WORK" && tar -cf "$OUT/results.tar" figures logs $(ls quality.json 2>/dev/null))
    for f in samples_from_noise.png; do [ -f "$WORK/figures/$f" ] && cp "$WORK/figures/$f" "$OUT/"; done
    $PY - "$W/dragnb_demo.json" "$WORK/quality.json" "$OUT/summary.json" <<'EOF'
import json, os, sys
meta = json.load(open(sys.argv[1]))
out = {"training": meta["training"], "factor": meta["factor"], "config_overrides": meta["config_overrides"]}
if os.path.exists(sys.argv[2]):
    out["quality"] = json.load(open(sys.argv[2]))["summary"]
json.dump(out, open(sys.argv[3], "w"), indent=1)
EOF
    local n; n=$(find "$OUT" -type f | wc -l)
    echo "gpu_train: packed $n files into $OUT:"; find "$OUT" -type f -printf '  %P %s bytes\n'
    [ "$n" -le 8 ] || echo "gpu_train: WARNING: $n files, over the 8 that come back"
}

# 2. training inside the budget (checkpoints every 2 minutes, so a crash still leaves a model)
DEV_ARGS=(); [ -n "${DEVICE:-}" ] && DEV_ARGS=(--device "$DEVICE")
GRAPH_ARGS=()   # the whole update replayed from one CUDA graph (dragnb.demo.stepping.GraphedStep), on a GPU
if [ "${CUDA_GRAPH:-1}" = 1 ] && [ "${DEVICE:-cuda}" != cpu ] \
        && $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    GRAPH_ARGS=(--cuda-graph)
fi
$PY -m dragnb.demo.train --out "$WORK/weights" --figures "$WORK/figures" --minutes "$MINUTES" \
    --arch "${ARCH:-f2l4}" --batch "${BATCH:-256}" --lr "${LR:-3e-4}" --warmup "${WARMUP:-500}" \
    --min-snr "${MIN_SNR:-5}" --t-focus "${T_FOCUS:-700}" --t-focus-prob "${T_FOCUS_PROB:-0.3}" \
    --seed "${SEED:-0}" --data torch --precision bf16 --ckpt-minutes 2 --threads "${THREADS:-8}" --log-every 200 \
    "${DEV_ARGS[@]}" "${GRAPH_ARGS[@]}" ${TRAIN_ARGS:-} 2>&1 | tee "$LOG/train.log"
echo "gpu_train: training done after $(( $(date +%s) - START )) s (exit ${PIPESTATUS[0]})"
pack || exit 1

# 3. the quality benchmark on a subset, on the CPU cores, cut to fit the deadline
LEFT=$(( DEADLINE - $(date +%s) - 15 ))
if [ "${QUALITY_N:-32}" -gt 0 ] && [ "$LEFT" -gt 45 ]; then
    echo "gpu_train: quality subset (${QUALITY_N:-32} cases, at most $LEFT s)"
    CUDA_VISIBLE_DEVICES= timeout "$LEFT" $PY benchmarks/bench_quality.py --weights "$WORK/weights" \
        --n "${QUALITY_N:-32}" --methods full --workers "${QUALITY_WORKERS:-8}" --threads "${QUALITY_THREADS:-$(( 2 * ${QUALITY_WORKERS:-8} ))}" \
        --json "$WORK/quality.json" ${QUALITY_ARGS:-} 2>&1 | tee "$LOG/quality.log"
    echo "gpu_train: quality exit ${PIPESTATUS[0]} after $(( $(date +%s) - START )) s"
    pack
else
    echo "gpu_train: quality subset skipped ($LEFT s left before the deadline)"
fi
echo "gpu_train: done in $(( $(date +%s) - START )) s"
