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
# No pip cache: a stack is installed once into its venv, and a cached copy of torch 2.1.2's wheels would take
# another ~4.7 GB of disk.
pip_install() { quiet "$venv/bin/pip" install -q --progress-bar off --no-cache-dir "$@"; }
if [ ! -x "$venv/bin/python" ]; then
  # A full disk shows up deep inside pip as "OSError: [Errno 28]"; say first what the stack needs.
  need_gb=3; [ -n "$torch_version" ] && [ "$torch_version" != 2.13.0 ] && need_gb=11
  free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "${free_gb:-0}" -lt "$need_gb" ]; then
    echo "warning: stack $stack needs about $need_gb GB of free disk to install, $(pwd) has $free_gb GB;" \
         "free some space (old .venv/* folders, pip's cache: pip cache purge) if pip fails" >&2
  fi
  python3 -m venv "$venv"
fi
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
