#!/usr/bin/env bash
# Create .venv and install requirements.txt into it; reinstalls only when requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: Python 3.10 or newer is needed; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
    echo "Install a newer Python, or point PYTHON at one: PYTHON=python3.11 $0" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating the virtual environment .venv"
    "$python" -m venv .venv
fi

stamp=.venv/.requirements.sha256
wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "installing requirements.txt into .venv (the first time downloads about 3 GB: torch with CUDA)"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$wanted" > "$stamp"
fi
