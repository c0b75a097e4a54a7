#!/usr/bin/env bash
# Debian's chromium for the browser test (root on CI and dev machines); skipped when present.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail" >&2
else
  echo "warning: chromium missing and not root; install it for the browser test" >&2
fi
