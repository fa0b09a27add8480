#!/usr/bin/env bash
# Install a headless Chromium for the `avp view` browser test (tests/test_view.py::test_headless_chromium_shows_the_avatar).
# Debian/Ubuntu, root + apt-get. Idempotent: does nothing when chromium, chromium-browser or google-chrome is already on
# PATH. Never fatal to its caller: when it cannot install (not root, no apt-get, the package is missing) it says why and
# exits 1; the browser test then skips and says that no Chromium was found.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive

for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" > /dev/null; then echo "chromium-up: $b already installed"; exit 0; fi
done
fail() { echo "chromium-up: no headless Chromium: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root to install it (running as $(id -un))"
command -v apt-get > /dev/null || fail "apt-get is not available"
log=$(mktemp)
# Debian ships `chromium`; on Ubuntu the deb is a snap stub, so try it last
for pkg in chromium chromium-browser; do
  if apt-get install -y -qq --no-install-recommends "$pkg" > "$log" 2>&1 \
     || { apt-get update -qq >> "$log" 2>&1 && apt-get install -y -qq --no-install-recommends "$pkg" >> "$log" 2>&1; }; then
    for b in chromium chromium-browser; do
      if command -v "$b" > /dev/null && timeout 60 "$b" --headless --no-sandbox --version > /dev/null 2>&1; then
        echo "chromium-up: installed $pkg ($("$b" --version 2>/dev/null | head -1))"; exit 0
      fi
    done
  fi
done
tail -5 "$log" >&2
fail "apt-get could not install a working chromium (log: $log)"
