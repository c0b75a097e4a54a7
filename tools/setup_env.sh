#!/usr/bin/env bash
# Create/refresh .venv/<stack> with one of the dependency stacks we support (tests/stacks/<stack>.txt).
# torch is installed first and pinned in every pip call, so pip never resolves another torch: 2.13.0
# (CPU) unless the stack file names another with a "# torch: X.Y.Z" line.
# Quiet: no download progress (torch 2.1.2 with its nvidia-* wheels is ~4.7 GB); errors still show.
set -euo pipefail
cd "$(dirname "$0")/.."
stack="${1:?usage: tools/setup_env.sh a1111|a1111-torch21|forge}"
reqs="tests/stacks/$stack.txt"
[ -f "$reqs" ] || { echo "no stack file $reqs" >&2; exit 2; }
torch_version="$(sed -n 's/^# torch: *\([0-9][0-9a-z.+]*\).*/\1/p' "$reqs" | head -n 1)"
torch="torch==${torch_version:-2.13.0}"
venv=".venv/$stack"
quiet() { "$@" 2>&1 | { grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }; }
pip_install() { quiet "$venv/bin/pip" install -q --progress-bar off "$@"; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
start=$SECONDS
pip_install "$torch"
pip_install -r "$reqs" "$torch"
# The stack must still have the torch it was made for (pip may not swap it for a dependency's sake).
"$venv/bin/python" - "$torch_version" <<'PY'
import sys, importlib.metadata as md
want = sys.argv[1] or "2.13.0"
have = md.version("torch").split("+")[0]
if have != want:
    sys.exit(f"torch {have} installed, expected {want}")
PY
echo "stack $stack ready: $venv ($torch, $((SECONDS - start)) s)"
