#!/usr/bin/env bash
# Set up .venv, then run the test suite. Arguments go to pytest (e.g. ./test.sh -k checkpoint).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python -m pytest "$@"
