#!/usr/bin/env bash
# Kiln's own tests against this checkout, in a virtualenv of their own (issue 15):
#   1. a venv with the published kiln-ai / kiln-server and every dependency pinned
#      (tests_kiln/requirements.txt, compiled against Kiln's uv.lock), installed with uv from PyPI and
#      cached outside the work tree, keyed by that file and the Python version: a warm run skips it;
#   2. Kiln's shipped adapter, error, retry, eval-runner and server-error tests, run three times on
#      the same selection: stock; with KilnInstrumentor on; with docs/kiln.md's patch applied to a copy
#      of the packages (tests_kiln/instrumented.py holds both routes to their promises). The same tests
#      must pass every time (tests_kiln/compare_runs.py prints the counts);
#   3. tests_kiln/: a failing run through Kiln's real LiteLlmAdapter against the scripted server, with
#      the real collector and Jaeger (tests/backends.py), and docs/kiln.md's example script.
# With CI=true a venv that cannot be built fails the run; elsewhere the script says why and skips.
# Knobs: KILN_OTEL_KILN_CACHE (default ~/.cache/kiln-otel), KILN_OTEL_KILN_INSTALL_TIMEOUT (s, 900).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$PWD"

PYTHON="${PYTHON:-python3}"
CACHE="${KILN_OTEL_KILN_CACHE:-$HOME/.cache/kiln-otel}"
UV_VERSION=0.13.8
INSTALL_TIMEOUT="${KILN_OTEL_KILN_INSTALL_TIMEOUT:-900}"
mkdir -p "$CACHE"
export LITELLM_LOCAL_MODEL_COST_MAP=True  # litellm fetches a price map over the network at import otherwise
export UV_PYTHON_DOWNLOADS=never  # the venv uses $PYTHON; uv must not fetch an interpreter

unavailable() {
  echo "[kiln-tests] Kiln venv unavailable: $1" >&2
  if [[ "${CI:-}" == "true" ]]; then
    echo "[kiln-tests] FAIL (CI=true: Kiln's tests must run)" >&2
    exit 1
  fi
  echo "[kiln-tests] SKIPPED: Kiln's own tests did not run" >&2
  exit 0
}

key=$( { cat tests_kiln/requirements.txt; "$PYTHON" -c 'import sys; print(sys.version)'; echo "uv $UV_VERSION"; } \
  | sha256sum | cut -c1-16)
venv="$CACHE/kiln-venv-$key"

started=$(date +%s)
(
  flock 9
  if [[ -x "$venv/bin/python" && -f "$venv/.kiln-otel-complete" ]]; then
    exit 0
  fi
  rm -rf "$venv"
  # Build under the final path (scripts inside a venv record it), marking it complete only at the end.
  uv_home="$CACHE/uv-$UV_VERSION"
  if [[ ! -x "$uv_home/bin/uv" ]]; then
    rm -rf "$uv_home"
    "$PYTHON" -m venv "$uv_home" && "$uv_home/bin/pip" install --quiet "uv==$UV_VERSION" || exit 1
  fi
  "$uv_home/bin/uv" venv --quiet --python "$PYTHON" "$venv" || exit 1
  timeout "$INSTALL_TIMEOUT" \
    "$uv_home/bin/uv" pip sync --quiet --python "$venv/bin/python" tests_kiln/requirements.txt || exit 1
  "$venv/bin/python" -c 'import kiln_ai.adapters.errors, kiln_server.custom_errors' || exit 1
  touch "$venv/.kiln-otel-complete"
) 9>"$CACHE/kiln-venv.lock" || unavailable "building $venv failed (see above)"
echo "[kiln-tests] Kiln venv ready in $(( $(date +%s) - started ))s: $venv"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shipped=(  # relative to the directory holding kiln_ai/ and kiln_server/ (the pytest rootdir)
  kiln_ai/adapters/test_errors.py
  kiln_ai/adapters/test_retry_classification.py
  kiln_ai/adapters/model_adapters
  kiln_ai/adapters/eval/test_eval_runner.py
  kiln_server/test_custom_error.py
  kiln_server/test_run_api_errors.py
  kiln_server/test_run_api.py
)
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

# The explicit route: docs/kiln.md's patch, applied to a copy of the published packages.
explicit="$results/explicit"
mkdir -p "$explicit"
cp -r "$site/kiln_ai" "$site/kiln_server" "$explicit/"
"$venv/bin/python" - docs/kiln.md >"$results/kiln-otel.patch" <<'PY'
import re, sys
blocks = re.findall(r"```diff\n(.*?)```", open(sys.argv[1]).read(), re.S)
assert len(blocks) == 1, f"docs/kiln.md should hold one diff block, found {len(blocks)}"
sys.stdout.write(blocks[0])
PY
(cd "$explicit" && git apply -p3 "$results/kiln-otel.patch") || { echo "[kiln-tests] FAIL: docs/kiln.md's patch does not apply to kiln-ai $(cd "$site" && ls -d kiln_ai-*.dist-info)"; exit 1; }

run_shipped() {  # $1: stock | instrumentor | explicit
  local root="$site" plugin=() status=0
  [[ "$1" != stock ]] && plugin=(-p tests_kiln.instrumented)
  [[ "$1" == explicit ]] && root="$explicit"
  (cd "$root" && PYTHONPATH="$root:$checkout" KILN_OTEL_ROUTE="$1" "$venv/bin/python" -m pytest \
    -c "$checkout/tests_kiln/pytest.ini" --rootdir "$root" -q "${plugin[@]}" --junitxml="$results/$1.xml" \
    "${shipped[@]}") >"$results/$1.log" 2>&1 || status=$?
  { grep -E "^kiln-otel|passed|failed|error" "$results/$1.log" || true; } | tail -n 25  # no match must not end the script before the log is shown
  if [[ $status -ne 0 ]]; then
    echo "[kiln-tests] Kiln's shipped tests, $1: pytest exited $status; last lines:"
    tail -n 60 "$results/$1.log"
    return 1
  fi
}

for route in stock instrumentor explicit; do
  echo "[kiln-tests] Kiln's shipped tests: $route"
  run_shipped "$route"
done
"$venv/bin/python" tests_kiln/compare_runs.py "$results/stock.xml" "$results/instrumentor.xml" "$results/explicit.xml"

echo "[kiln-tests] a failing run through Kiln's LiteLlmAdapter, with and without kiln-otel; docs/kiln.md's example"
PYTHONPATH="$checkout" "$venv/bin/python" -m pytest -c tests_kiln/pytest.ini --rootdir "$checkout" -q \
  -p tests.backends tests_kiln
