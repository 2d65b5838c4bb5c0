#!/usr/bin/env bash
# Install what is missing, then run the service on the built-in default
# (demo model discovered in ~/.cache/llama-exporter/models, cap 4, port 9777).
# Extra arguments go to `llama-exporter serve` (e.g. --config FILE).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh"
exec "${LLAMA_EXPORTER_VENV:-$ROOT/.venv}/bin/llama-exporter" serve "$@"
