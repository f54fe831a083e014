# Sourced by the GPU machine's prepared scripts (gpu_sd_timings.sh, official_lora.sh), after they set REPO:
#
#   start_prepared_call "USAGE AFTER OUT_DIR" "$@" || exit 2; shift
#                                     # the first argument must be OUT_DIR (not an option): sets OUT_DIR (made) and PY
#   use_carried_diffusers REPO PY     # today's diffusers importable where it is missing (the GPU machine has torch,
#                                     # peft, transformers, accelerate and einops, but no diffusers), from the wheels
#                                     # carried in .whl/, installed into /tmp/site and put on PYTHONPATH; returns 3,
#                                     # with a message, when diffusers is missing and cannot be installed
#   use_this_tree REPO                # dragnb from this tree (no pip install: the CPU torch pin must not reach that
#                                     # machine), unbuffered output, no progress bars, no hub lookups
start_prepared_call() {
    local usage=$1
    shift
    if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
        echo "usage: $0 OUT_DIR $usage" >&2
        return 2
    fi
    OUT_DIR=$1
    PY=${PYTHON:-python3}
    mkdir -p "$OUT_DIR"
}

use_this_tree() {
    export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH}
    export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
}

use_carried_diffusers() {
    local repo=$1 py=$2
    if [ -d /tmp/site/diffusers ] && ! "$py" -c "import diffusers" 2>/dev/null; then   # installed by an earlier run
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    if ! "$py" -c "import diffusers" 2>/dev/null; then
        if ls "$repo"/.whl/*.whl >/dev/null 2>&1; then
            "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
                "$repo"/.whl/*.whl || { echo "installing the carried wheels failed" >&2; return 3; }
            export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        else
            echo "diffusers is not installed and no wheels are in $repo/.whl/: carry them (benchmarks/PARITY.md)" >&2
            return 3
        fi
    fi
}
