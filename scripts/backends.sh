#!/usr/bin/env bash
# Build (or reuse) the real trace backends kiln-otel runs against, from the Go module proxy:
#   otelcol-kiln  - the OpenTelemetry Collector distribution in backends/collector (the exact
#                   components collector-config/otelcol.yaml uses)
#   jaeger        - Jaeger v2 (github.com/jaegertracing/jaeger v1.76.0 == v2.13.0), backends/jaeger
#
# Usage:
#   scripts/backends.sh build [collector|jaeger]  build what is missing; print the binary paths
#   scripts/backends.sh paths [collector|jaeger]  print the paths, exit 1 if a binary is missing
#   scripts/backends.sh run                       build, then run Jaeger + the collector in the
#                                                 foreground with collector-config/ (Ctrl-C stops)
#   scripts/backends.sh run gateway               the same with the gateway profile instead of the
#                                                 collector: a load-balancing collector on :4317/:4318
#                                                 in front of KILN_OTEL_GATEWAY_SAMPLER_COUNT (2)
#                                                 tail-sampling collectors (ports from
#                                                 KILN_OTEL_GATEWAY_SAMPLER_BASE_PORT+10, default 4410),
#                                                 archives in KILN_OTEL_GATEWAY_ARCHIVE_DIR (default .)
#                                                 /kiln-otel-traces-sampler-<i>.jsonl (docs/pipeline.md)
#   scripts/backends.sh clean                     remove the binary cache
#
# Binaries are cached OUTSIDE the work tree, keyed by the build inputs:
#   ${KILN_OTEL_BACKENDS_CACHE:-$HOME/.cache/kiln-otel/backends}/<name>-<sha256(go.mod go.sum main.go)>/<name>
# `build` prints one path per line, the collector first, then Jaeger; progress goes to stderr.
# It is idempotent and safe to run concurrently (one flock per binary; the binary is moved
# into place atomically). Go's own module and build caches (GOMODCACHE, GOCACHE) are used as
# configured, so a second machine state rebuilds quickly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KILN_OTEL_BACKENDS_CACHE:-${HOME:-/tmp}/.cache/kiln-otel/backends}"
LOCK_TIMEOUT="${KILN_OTEL_BACKENDS_LOCK_TIMEOUT:-3600}"

GO="${GO:-}"
if [[ -z "$GO" ]]; then
  GO="$(command -v go || true)"
  [[ -n "$GO" ]] || GO=/usr/local/go/bin/go
fi

export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '[backends.sh] %s\n' "$*" >&2; }

# name -> module directory, binary name, package to build
module_dir() { echo "$ROOT/backends/$1"; }
binary_name() { case "$1" in collector) echo otelcol-kiln ;; jaeger) echo jaeger ;; esac; }
build_target() { case "$1" in collector) echo . ;; jaeger) echo github.com/jaegertracing/jaeger/cmd/jaeger ;; esac; }

cache_key() {
  local dir f
  dir="$(module_dir "$1")"
  for f in go.mod go.sum main.go; do
    if [[ -f "$dir/$f" ]]; then
      printf '%s\n' "$f"
      cat "$dir/$f"
    fi
  done | sha256sum | cut -c1-64
}

binary_path() {
  local name="$1"
  echo "$CACHE/$name-$(cache_key "$name")/$(binary_name "$name")"
}

build_one() {
  local name="$1" bin dir tmp lock start
  bin="$(binary_path "$name")"
  dir="$(dirname "$bin")"
  if [[ -x "$bin" ]]; then
    log "$name: cached $bin"
    return 0
  fi
  command -v "$GO" >/dev/null || { log "no Go toolchain (set GO=/path/to/go)"; return 1; }
  mkdir -p "$CACHE"
  lock="$CACHE/$name.lock"
  exec {fd}>"$lock"
  log "$name: waiting for $lock (at most ${LOCK_TIMEOUT}s)"
  flock -w "$LOCK_TIMEOUT" "$fd" || { log "$name: timed out waiting for $lock"; return 1; }
  if [[ -x "$bin" ]]; then # built by a concurrent run while we waited
    log "$name: cached $bin"
    exec {fd}>&-
    return 0
  fi
  mkdir -p "$dir"
  rm -f "$dir/.$(binary_name "$name").tmp."* # left by a build that was killed (we hold the lock)
  tmp="$dir/.$(binary_name "$name").tmp.$$"
  start=$SECONDS
  log "$name: building $(build_target "$name") with $("$GO" version) (minutes on a cold machine)"
  if ! (cd "$(module_dir "$name")" &&
    "$GO" build -trimpath -ldflags='-s -w' -o "$tmp" "$(build_target "$name")"); then
    rm -f "$tmp"
    exec {fd}>&-
    log "$name: build failed"
    return 1
  fi
  mv -f "$tmp" "$bin"
  exec {fd}>&-
  log "$name: built $bin in $((SECONDS - start))s"
}

names_from() {
  if [[ $# -eq 0 ]]; then
    echo collector jaeger
    return
  fi
  local n
  for n in "$@"; do
    case "$n" in
      collector | jaeger) echo "$n" ;;
      *) log "unknown backend '$n' (collector|jaeger)"; exit 2 ;;
    esac
  done
}

cmd_build() {
  local n
  for n in $(names_from "$@"); do build_one "$n"; done
  for n in $(names_from "$@"); do binary_path "$n"; done
}

cmd_paths() {
  local n bin rc=0
  for n in $(names_from "$@"); do
    bin="$(binary_path "$n")"
    echo "$bin"
    [[ -x "$bin" ]] || { log "$n: not built ($bin)"; rc=1; }
  done
  return $rc
}

start_jaeger() {
  # Both are collectors with the same default ports: on one host, Jaeger's OTLP receiver moves
  # to 14317/14318 and everything binds 127.0.0.1. Any of these can be overridden from outside.
  : "${KILN_OTEL_JAEGER_OTLP_GRPC_ENDPOINT:=127.0.0.1:14317}"
  : "${KILN_OTEL_JAEGER_OTLP_HTTP_ENDPOINT:=127.0.0.1:14318}"
  : "${KILN_OTEL_JAEGER_QUERY_HTTP_ENDPOINT:=127.0.0.1:16686}"
  : "${KILN_OTEL_JAEGER_QUERY_GRPC_ENDPOINT:=127.0.0.1:16685}"
  : "${KILN_OTEL_JAEGER_HEALTH_ENDPOINT:=127.0.0.1:13134}"
  : "${KILN_OTEL_JAEGER_METRICS_HOST:=127.0.0.1}"
  : "${KILN_OTEL_JAEGER_METRICS_PORT:=8889}"
  export "${!KILN_OTEL_JAEGER_@}"
  log "jaeger:    $1 --config collector-config/jaeger.yaml (UI/API http://$KILN_OTEL_JAEGER_QUERY_HTTP_ENDPOINT)"
  "$1" --config "$ROOT/collector-config/jaeger.yaml" &
  pids+=($!)
}

# One tail-sampling collector: otelcol.yaml + gateway/sampler.yaml, on ports BASE+10i .. BASE+10i+3
# (BASE: KILN_OTEL_GATEWAY_SAMPLER_BASE_PORT, default 4400).
start_sampler() {
  local col="$1" i="$2" base=$((${KILN_OTEL_GATEWAY_SAMPLER_BASE_PORT:-4400} + 10 * $2))
  samplers+=("127.0.0.1:$base")  # cmd_run's list: the load balancer's routing targets
  (
    export KILN_OTEL_COLLECTOR_GRPC_ENDPOINT="127.0.0.1:$base"
    export KILN_OTEL_COLLECTOR_HTTP_ENDPOINT="127.0.0.1:$((base + 1))"
    export KILN_OTEL_COLLECTOR_HEALTH_ENDPOINT="127.0.0.1:$((base + 2))"
    export KILN_OTEL_COLLECTOR_METRICS_HOST=127.0.0.1
    export KILN_OTEL_COLLECTOR_METRICS_PORT=$((base + 3))
    export KILN_OTEL_COLLECTOR_FILE_PATH="${KILN_OTEL_GATEWAY_ARCHIVE_DIR:-$ROOT}/kiln-otel-traces-sampler-$i.jsonl"
    log "sampler $i: OTLP 127.0.0.1:$base gRPC; file $KILN_OTEL_COLLECTOR_FILE_PATH"
    exec "$col" --config "$ROOT/collector-config/otelcol.yaml" --config "$ROOT/collector-config/gateway/sampler.yaml"
  ) &
  pids+=($!)
}

cmd_run() {
  local col jae i samplers=() pids=()
  case "${1:-}" in
    "" | gateway) ;;
    *) log "unknown profile '$1' (run | run gateway)"; exit 2 ;;
  esac
  { read -r col; read -r jae; } < <(cmd_build)
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait' INT TERM EXIT
  start_jaeger "$jae"
  : "${KILN_OTEL_JAEGER_OTLP_ENDPOINT:=$KILN_OTEL_JAEGER_OTLP_GRPC_ENDPOINT}"
  export KILN_OTEL_JAEGER_OTLP_ENDPOINT
  if [[ "${1:-}" == gateway ]]; then
    for ((i = 1; i <= ${KILN_OTEL_GATEWAY_SAMPLER_COUNT:-2}; i++)); do
      start_sampler "$col" "$i"
    done
    : "${KILN_OTEL_GATEWAY_GRPC_ENDPOINT:=127.0.0.1:4317}"
    : "${KILN_OTEL_GATEWAY_HTTP_ENDPOINT:=127.0.0.1:4318}"
    : "${KILN_OTEL_GATEWAY_HEALTH_ENDPOINT:=127.0.0.1:13133}"
    : "${KILN_OTEL_GATEWAY_METRICS_HOST:=127.0.0.1}"
    : "${KILN_OTEL_GATEWAY_METRICS_PORT:=8888}"
    KILN_OTEL_GATEWAY_SAMPLERS="[$(IFS=,; echo "${samplers[*]}")]"
    export "${!KILN_OTEL_GATEWAY_@}"
    log "gateway:   $col --config collector-config/gateway/loadbalancer.yaml (OTLP" \
      "$KILN_OTEL_GATEWAY_GRPC_ENDPOINT gRPC, $KILN_OTEL_GATEWAY_HTTP_ENDPOINT HTTP; samplers $KILN_OTEL_GATEWAY_SAMPLERS)"
    "$col" --config "$ROOT/collector-config/gateway/loadbalancer.yaml" &
    pids+=($!)
  else
    : "${KILN_OTEL_COLLECTOR_GRPC_ENDPOINT:=127.0.0.1:4317}"
    : "${KILN_OTEL_COLLECTOR_HTTP_ENDPOINT:=127.0.0.1:4318}"
    : "${KILN_OTEL_COLLECTOR_HEALTH_ENDPOINT:=127.0.0.1:13133}"
    : "${KILN_OTEL_COLLECTOR_METRICS_HOST:=127.0.0.1}"
    : "${KILN_OTEL_COLLECTOR_METRICS_PORT:=8888}"
    : "${KILN_OTEL_COLLECTOR_FILE_PATH:=$ROOT/kiln-otel-traces.jsonl}"
    export "${!KILN_OTEL_COLLECTOR_@}"
    log "collector: $col --config collector-config/otelcol.yaml (OTLP $KILN_OTEL_COLLECTOR_GRPC_ENDPOINT gRPC," \
      "$KILN_OTEL_COLLECTOR_HTTP_ENDPOINT HTTP; file $KILN_OTEL_COLLECTOR_FILE_PATH)"
    "$col" --config "$ROOT/collector-config/otelcol.yaml" &
    pids+=($!)
  fi
  wait -n "${pids[@]}" || true
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  paths) shift; cmd_paths "$@" ;;
  run) shift; cmd_run "$@" ;;
  clean) rm -rf "$CACHE" ;;
  *)
    sed -n '2,26p' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
