#!/usr/bin/env bash
# Set up and run everything CI runs, on a fresh machine or a warm one:
#   1. a virtualenv in .venv with kiln-otel and its dev extras (litellm, FastAPI, pytest, ruff, mypy, ...)
#   2. the real backends (OpenTelemetry Collector + Jaeger) built from the Go module proxy, cached
#      outside the work tree (scripts/backends.sh)
#   3. ruff, mypy, Kiln's own tests in a venv of their own (scripts/kiln-tests.sh; skipped when
#      pytest arguments are given, unless KILN_OTEL_KILN_TESTS=1), then the whole pytest suite (the
#      backend tests start and stop their own processes)
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k litellm -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

started=$(date +%s)
bash scripts/backends.sh build >/dev/null
echo "[test.sh] backends ready in $(( $(date +%s) - started ))s"

.venv/bin/ruff check kiln_otel tests tests_kiln benchmarks scripts
.venv/bin/ruff format --check kiln_otel tests tests_kiln benchmarks scripts
.venv/bin/mypy
export LITELLM_LOCAL_MODEL_COST_MAP=True
if [[ $# -eq 0 || "${KILN_OTEL_KILN_TESTS:-}" == "1" ]]; then
  bash scripts/kiln-tests.sh
fi
exec .venv/bin/python -m pytest "$@"
