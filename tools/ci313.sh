#!/usr/bin/env bash
# The README's test command on pyenv's newest Python 3.13, in a temporary venv (what .ci/run will
# run again once the 3.13 failures it names are fixed).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v pyenv > /dev/null && v313=$(pyenv latest 3.13 2> /dev/null); then
    py313=$(PYENV_VERSION=$v313 pyenv which python3.13)
else
    py313=$(command -v python3.13)
fi
venv=$(mktemp -d)/venv313
"$py313" -m venv "$venv"
. "$venv/bin/activate"
pip install -q -e '.[test]'
python -m pytest "$@"
