#!/usr/bin/env bash
# Create/refresh .venv/<stack> with one of the dependency stacks we support (tests/stacks/<stack>.txt).
# torch is installed first and pinned in every pip call, so pip never resolves another (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
stack="${1:?usage: tools/setup_env.sh a1111|forge}"
venv=".venv/$stack"
quiet() { "$@" 2>&1 | { grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
quiet "$venv/bin/pip" install -q torch==2.13.0
quiet "$venv/bin/pip" install -q -r "tests/stacks/$stack.txt" torch==2.13.0
echo "stack $stack ready: $venv"
