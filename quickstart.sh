#!/usr/bin/env bash
# The README's Quick start: install what coopsock needs (as root, or through
# sudo), make .venv with its requirements and the tests', then run the demo
# echo server. Arguments go to the demo (./quickstart.sh --port 9000); run it
# again at any time: what is there already is kept. PYTHON picks the
# interpreter (python3 by default).
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else return 1
  fi
}
# libev4 for the fast loop (without it coopsock runs on the selectors loop),
# python3-venv for `python3 -m venv` on Debian and Ubuntu.
need=()
command -v "$py" >/dev/null || need+=(python3)
"$py" -c 'import ctypes; ctypes.CDLL("libev.so.4")' 2>/dev/null || need+=(libev4)
"$py" -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "quickstart: installing ${need[*]}"
  if ! command -v apt-get >/dev/null; then
    echo "quickstart: no apt-get here: install ${need[*]} yourself (macOS: brew install libev)"
  elif ! { as_root apt-get update -qq &&
           as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }; then
    echo "quickstart: could not install ${need[*]}: run this as root, or install sudo"
  fi
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
  { echo "quickstart: coopsock needs Python 3.9 or newer; set PYTHON=python3.X"; exit 1; }

# A venv that lacks pip was made without python3-venv: make it again.
[ -x .venv/bin/pip ] || { rm -rf .venv; "$py" -m venv .venv; }
echo "quickstart: installing the requirements into .venv"
.venv/bin/pip install -q --disable-pip-version-check -r .ci/test-requirements.txt
echo "quickstart: ready; .venv/bin/python -m pytest -q runs the tests"
exec .venv/bin/python -m coopsock "$@"
