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
# The web demo's end-to-end test drives a real headless browser: Debian's chromium and chromedriver.
if [ "$command" = "test" ] && ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[dev] installing Debian's chromium and chromium-driver for the browser test" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
            || echo "[dev] could not install chromium; the browser test will fail" >&2
    else
        echo "[dev] chromium/chromedriver missing: install them (apt-get install chromium chromium-driver)" >&2
    fi
fi
shift || true
case "$command" in
    demo) exec "$venv/bin/python" -m adds toyworld --quick "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    setup) ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|setup} [ARGS...]" >&2; exit 2 ;;
esac
