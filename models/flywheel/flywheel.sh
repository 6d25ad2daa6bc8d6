#!/usr/bin/env bash
# The flywheel's one command: set up framesift (scripts/setup.sh) and the pinned Python
# environment (models/flywheel/setup.sh), then run models/flywheel/flywheel.py with these
# arguments (--help lists them; --smoke is the short version CI runs).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
ORT_DYLIB_PATH=$(scripts/setup.sh | tail -n 1)
export ORT_DYLIB_PATH
venv=$(models/flywheel/setup.sh | tail -n 1)
exec "$venv/bin/python" models/flywheel/flywheel.py "$@"
