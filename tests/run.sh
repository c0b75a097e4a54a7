#!/usr/bin/env bash
# The test command (README, .ci/run): installs both dependency stacks by itself, then runs the
# whole suite on each: the AUTOMATIC1111 1.10 pins and the Forge stack.
set -euo pipefail
cd "$(dirname "$0")/.."
stacks="${STACKS:-a1111 forge}"
bash tools/setup_browser.sh
for s in $stacks; do bash tools/setup_env.sh "$s"; done
status=0
for s in $stacks; do
  echo "=== tests on the $s stack ==="
  ".venv/$s/bin/python" -m pytest tests -q -p no:cacheprovider --timeout=900 "$@" || status=$?
done
exit $status
