# Sourced by the GPU machine's prepared scripts (gpu_sd_timings.sh, official_lora.sh): makes today's diffusers
# importable where it is missing (the GPU machine has torch, peft, transformers, accelerate and einops, but no
# diffusers), from the wheels carried in .whl/, installed into /tmp/site and put on PYTHONPATH.
#
#   use_carried_diffusers REPO PY     # returns 3, with a message, when diffusers is missing and cannot be installed
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
