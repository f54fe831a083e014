#!/usr/bin/env bash
# What tests/browser needs, installed only when missing (safe to run again):
#   - Debian's chromium (apt) at /usr/bin/chromium; Playwright drives it with executable_path, so no
#     `playwright install` and no downloaded browser;
#   - jupyterlab, notebook (7: the browser test opens the editor there too) and playwright (pip) into the active Python environment ($PYTHON, else $VIRTUAL_ENV's python,
#     else python3). jupyterlab brings ipykernel and websocket-client, which the test uses too.
set -euo pipefail

PY="${PYTHON:-}"
if [ -z "$PY" ] && [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; fi
PY="${PY:-python3}"

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }
fi

# versions the browser test was written and run with
if ! "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
want = {"jupyterlab": "4.", "notebook": "7.", "playwright": "1.", "websocket-client": "1.", "ipykernel": ""}
sys.exit(0 if all(md.version(p).startswith(v) for p, v in want.items()) else 1)
PYEOF
then
    "$PY" -m pip install -q "jupyterlab==4.6.6" "notebook==7.6.5" "playwright==1.65.2"
fi

/usr/bin/chromium --version 2>/dev/null
"$PY" -c "import jupyterlab, notebook, playwright, websocket; print('jupyterlab', jupyterlab.__version__, '| notebook', notebook.__version__, '| playwright + websocket-client ok')"
