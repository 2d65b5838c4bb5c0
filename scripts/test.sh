#!/usr/bin/env bash
# Install what is missing, then run every check: lint, types, generated
# dashboards, and the whole test suite (real llama-server and Prometheus included).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh" --test
VENV=${LLAMA_EXPORTER_VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
echo "==> ruff" >&2
ruff check .
ruff format --check .
echo "==> mypy" >&2
mypy
echo "==> dashboards are up to date" >&2
python grafana/generate.py --check
echo "==> pytest" >&2
exec pytest -p no:cacheprovider "$@"
