#!/usr/bin/env bash
# Set up (or reuse) the project's virtualenv, then run the main job or the tests.
#
#   bash scripts/dev.sh demo [ARGS]   # the main job: adds toyworld --quick (the paper's tables in miniature)
#   bash scripts/dev.sh test [ARGS]   # the test suite (ARGS go to pytest)
#   bash scripts/dev.sh setup         # only create / update the virtualenv
#
# The virtualenv is .venv (override with ADDS_VENV). torch is pinned: an unpinned torch pulls a multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ADDS_VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[dev] creating virtualenv $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.adds-install-stamp"
want="$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[dev] installing torch==2.14.1 torchvision==0.29.1 and adds[dev] into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c "import torch, open_clip, adds" || { echo "[dev] installation failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi

command="${1:-}"
# Tests drive real tools: Debian's headless chromium + chromedriver (the web demo) and exiftool (the independent
# reader of the XMP sidecars `adds tag --write xmp` writes).
if [ "$command" = "test" ]; then
    missing=()
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
    command -v exiftool >/dev/null 2>&1 || missing+=(libimage-exiftool-perl)
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
            echo "[dev] installing Debian packages for the tests: ${missing[*]}" >&2
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null \
                || echo "[dev] could not install ${missing[*]}; the tests that need them will fail" >&2
        else
            echo "[dev] missing tools for the tests: install ${missing[*]} (apt-get install ...)" >&2
        fi
    fi
fi
shift || true
case "$command" in
    demo) exec "$venv/bin/python" -m adds toyworld --quick "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    setup) ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|setup} [ARGS...]" >&2; exit 2 ;;
esac
