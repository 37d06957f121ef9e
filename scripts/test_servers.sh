#!/usr/bin/env bash
# Maintainers' check of the course against a server nobody here wrote
# (`make test-servers`; not in CI: building llama.cpp takes ~11 min on 2 idle cores).
#
#   scripts/test_servers.sh source    download llama-cpp-python's source package into build/servers-src
#                                     (seconds, no build): it vendors llama.cpp, whose
#                                     convert_hf_to_gguf.py `make gguf` uses
#   scripts/test_servers.sh install   also build it into its own environment, build/servers-venv
#   scripts/test_servers.sh           (`make test-servers`) install if needed, export TinyGPT to GGUF,
#                                     check the file, serve it on 127.0.0.1 with llama-cpp-python's
#                                     server, probe what it honours (data/llamacpp_probe.csv), stop it,
#                                     then run chapters 06-08 against it (HTML in build/servers-notebooks)
#   scripts/test_servers.sh serve     serve the GGUF on 127.0.0.1:$PORT until Ctrl-C (see /work/notes or
#                                     docs/teaching.md for pointing the notebooks at it)
#
# llama-cpp-python is pinned here and NOT in requirements.txt: it is a maintainers' tool,
# compiled from PyPI's source package (a C++ build of llama.cpp that takes minutes and needs
# cmake and a compiler), which learners, Binder and CI must never pay for, and it lives in its
# own environment so its server's dependencies cannot move the course's pins. The pin fixes
# which llama.cpp the stored probe table describes; change it only together with a re-run of
# this script (the table records the version and the date).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"

cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="$ROOT/build/servers-venv"
SRC="$ROOT/build/servers-src"
STAMP="$VENV/.llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
PY="$ROOT/.venv/bin/python"
PYTHON="${PYTHON:-python3}"
PORT="${GLASSBOX_LLAMACPP_PORT:-8089}"
GGUF="${GLASSBOX_GGUF:-$ROOT/build/gguf/tinygpt-f32.gguf}"
SDIST="$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
CONVERTER="$SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/convert_hf_to_gguf.py"

source_package() {
    if [ -f "$CONVERTER" ]; then
        return
    fi
    mkdir -p "$SRC"
    test -f "$SDIST" || "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps \
        --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$SRC"
    test -f "$SDIST" || { echo "llama-cpp-python's source package was not downloaded: $SDIST" >&2; exit 1; }
    tar -xzf "$SDIST" -C "$SRC"
    test -f "$CONVERTER" || { echo "the source package has no vendor/llama.cpp/convert_hf_to_gguf.py" >&2; exit 1; }
}

install() {
    source_package
    if [ -f "$STAMP" ]; then
        echo "build/servers-venv: llama-cpp-python $LLAMA_CPP_PYTHON_VERSION already installed"
        return
    fi
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source (~11 min on 2 idle cores)..."
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
        "llama-cpp-python[server] @ file://$SDIST"
    touch "$STAMP"
}

gguf() {
    source_package
    "$PY" scripts/export_gguf.py --converter "$CONVERTER" --out "$GGUF" --check
}

notebooks() {
    # Chapters 06-08 against the server: the notebooks probe it and say what they skip.
    local key="sk-llamacpp-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local log="$ROOT/build/llamacpp-server-notebooks.log"
    env -u MODEL -u HOST -u PORT -u API_KEY "$VENV/bin/python" -m llama_cpp.server --model "$GGUF" \
        --model_alias tinygpt-gguf --host 127.0.0.1 --port "$PORT" --n_ctx 128 --api_key "$key" \
        --n_threads 1 --n_threads_batch 1 > "$log" 2>&1 &
    SERVER_PID=$!
    trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        curl -sf -H "Authorization: Bearer $key" "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server stopped; see $log" >&2; return 1; }
        sleep 1
    done
    local status=0
    GLASSBOX_API_BASE="http://127.0.0.1:$PORT/v1" GLASSBOX_API_KEY="$key" GLASSBOX_API_MODEL=tinygpt-gguf \
        "$PY" scripts/run_notebooks.py --html build/servers-notebooks \
        notebooks/06_*.ipynb notebooks/07_*.ipynb notebooks/08_*.ipynb || status=$?
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    trap - EXIT
    return $status
}

serve() {
    echo "serving $GGUF on http://127.0.0.1:$PORT/v1 as tinygpt-gguf (Ctrl-C stops it)"
    exec env -u MODEL -u HOST -u PORT "$VENV/bin/python" -m llama_cpp.server --model "$GGUF" \
        --model_alias tinygpt-gguf --host 127.0.0.1 --port "$PORT" --n_ctx 128 \
        --n_threads 1 --n_threads_batch 1 ${GLASSBOX_LLAMACPP_KEY:+--api_key "$GLASSBOX_LLAMACPP_KEY"}
}

main() {
    install
    echo "--- export TinyGPT to GGUF with llama.cpp's converter"
    "$PY" scripts/export_gguf.py --converter "$CONVERTER" --out "$GGUF" --check
    echo "--- the GGUF test, for real"
    GLASSBOX_GGUF_CONVERTER="$CONVERTER" OMP_NUM_THREADS=1 \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_gguf.py
    echo "--- serve it on 127.0.0.1:$PORT and probe it"
    "$PY" scripts/probe_servers.py --venv "$VENV" --model "$GGUF" --port "$PORT" \
        --version "$LLAMA_CPP_PYTHON_VERSION" --out data/llamacpp_probe.csv
    echo "--- chapters 06-08 against it"
    notebooks
}

case "${1:-all}" in
    source) source_package ;;
    install) install ;;
    gguf) gguf ;;
    serve) serve ;;
    notebooks) notebooks ;;
    all) main ;;
    *) echo "usage: $0 [source|install|gguf|serve|notebooks|all]" >&2; exit 2 ;;
esac
