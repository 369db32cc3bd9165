#!/usr/bin/env bash
# Debian packages the browser test (tests/test_browser.py) needs: the system Chromium, which
# Playwright drives (never a browser that Playwright downloads), and fonts, CJK included, so that
# pages and screenshots show every character. Idempotent: silent when all are installed already.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core fonts-liberation fonts-wqy-microhei)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "ci_system_deps: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ci_system_deps: need root (or passwordless sudo) to install: ${missing[*]}" >&2
    exit 1
fi

echo "ci_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's launcher prints a harmless shell warning on some machines; only the version matters here
/usr/bin/chromium --version 2>/dev/null
