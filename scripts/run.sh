#!/usr/bin/env bash
# One entry point for a fresh clone: sets up .venv (or reuses it when verified), then runs
#   repro          dvc repro (the main job, on the embedded sample unless params say otherwise)
#   test           the test suite (what CI runs)
#   get-livecell   download real LIVECell into data/livecell and record it in data.dvc
#   <anything>     run that command inside the environment, e.g. `dvc exp run -S model.lr=1e-4`
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.livecellseg-stamp

setup_venv() {
    # Reuse .venv only when it was built from this exact pyproject.toml by this Python
    # and the package imports; otherwise rebuild it from scratch.
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $($PY -c 'import sys; print(sys.version)')"
    if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]] \
        && "$VENV/bin/python" -c "import livecellseg, torch, torchvision, dvc, pycocotools" 2>/dev/null; then
        return
    fi
    echo "setting up $VENV (first time: a few minutes; torch is large)" >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e ".[dev]"
    echo "$want" > "$STAMP"
}

setup_venv
export PATH="$PWD/$VENV/bin:$PATH"
export PYTHONHASHSEED=0

cmd=${1:-repro}
shift || true
case "$cmd" in
    repro) exec dvc repro "$@" ;;
    test) exec python -m pytest "$@" ;;
    get-livecell)
        livecellseg get-livecell data/livecell "$@"
        dvc commit --force data.dvc
        echo "LIVECell is in data/livecell; run it with: bash scripts/run.sh dvc exp run -S data.source=livecell" ;;
    *) exec "$cmd" "$@" ;;
esac
