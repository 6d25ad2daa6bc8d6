#!/usr/bin/env bash
# The Python environment for training and the flywheel: target/torch-venv with the pinned
# models/detector/requirements.txt (torch's Linux wheel on PyPI brings about 4.5 GB of
# CUDA libraries; about 2-3 minutes on a fast link). Safe to run again: it skips the
# install when the venv already holds these requirements. Needs python3 with venv
# (scripts/setup.sh installs it). Prints the venv's path on its last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=target/torch-venv
req=models/detector/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "flywheel setup: installing $req into $venv" >&2
  mkdir -p target
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >"$venv/pip.log" 2>&1; then
    tail -n 30 "$venv/pip.log" >&2
    echo "flywheel setup: pip install -r $req failed; the log is $venv/pip.log" >&2
    exit 1
  fi
  echo "$want" >"$stamp"
fi
echo "$root/$venv"
