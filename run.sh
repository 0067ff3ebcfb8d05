#!/usr/bin/env bash
# permerge's two entry points, each setting up what it needs on a fresh machine:
#   bash run.sh app    create .venv, install requirements, start the app on 127.0.0.1:8501
#   bash run.sh test   also install the test tools, Ray and Chromium, then run the whole suite
# Set PERMERGE_HOST=0.0.0.0 to serve beyond this machine (off by default), PORT to move it.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

ensure_venv() {  # $1: requirements file; reinstall only when it changed
  local req="$1" stamp=".venv/.installed-$(basename "$1")"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  local want; want="$(cat requirements*.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "permerge: installing $req into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi
}

ensure_chromium() {  # the browser test drives Debian's Chromium through Playwright
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "permerge: installing Debian's chromium for the browser test" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "permerge: /usr/bin/chromium is missing; install Debian's chromium to run the browser test" >&2
    fi
  fi
}

case "${1:-app}" in
  app)
    ensure_venv requirements.txt
    shift || true
    exec .venv/bin/python -m streamlit run app.py \
      --server.address "${PERMERGE_HOST:-127.0.0.1}" --server.port "${PORT:-8501}" \
      --server.headless true --browser.gatherUsageStats false "$@"
    ;;
  test)
    ensure_venv requirements-dev.txt
    ensure_venv requirements-ray.txt  # optional for users (grid --engine ray); the tests run it on a local Ray
    ensure_chromium
    shift || true
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh app|test [extra arguments]" >&2
    exit 2
    ;;
esac
