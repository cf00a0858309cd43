#!/usr/bin/env bash
# The main job: set up .venv, then run research.ipynb and inference.ipynb top to bottom.
# With a CUDA GPU this is the full run on the real weights (downloaded on first use); without one it is
# the smoke profile on tiny random models. Options go to `python -m utils.notebooks` (see --help).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python -m utils.notebooks "$@"
