#!/usr/bin/env bash
# The test command (README, .ci/run): installs the dependency stacks by itself, then runs the whole
# suite on each: the AUTOMATIC1111 1.10 pins on the WebUI's torch 2.1.2 (a1111-torch21) and on torch
# 2.13.0 (a1111), and the Forge stack. STACKS="a1111 forge" narrows it.
set -euo pipefail
cd "$(dirname "$0")/.."
stacks="${STACKS:-a1111-torch21 a1111 forge}"
bash tools/setup_browser.sh
for s in $stacks; do bash tools/setup_env.sh "$s"; done
status=0
for s in $stacks; do
  echo "=== tests on the $s stack ==="
  ".venv/$s/bin/python" -m pytest tests -q -rfEs -p no:cacheprovider --timeout=900 "$@" || status=$?
done
exit $status
