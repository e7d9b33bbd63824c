#!/usr/bin/env bash
# HTTP load test: the demo server (tollgate in front of every route) against a bare axum server
# serving the same /api/simple handler, both on 127.0.0.1, under wrk. Prints req/s and p99 side
# by side. Installs wrk if it is missing; stops everything it starts.
#
#   scripts/load.sh                      # 10 s per run, 2 wrk threads, 64 connections
#   DURATION=5s CONNECTIONS=32 scripts/load.sh
#
# Runs (all GET /api/simple):
#   bare                 bare axum server
#   tollgate, admitted   demo server, X-API-Key: enterprise-demo-key, the enterprise tier raised
#                        through the environment (TOLLGATE_TIERS__ENTERPRISE__*) so that every
#                        request is admitted (headers on, as configured)
#   tollgate, rejected   demo server, X-API-Key: free-demo-key (60/min, burst 10): all but a
#                        handful answered 429 with a problem+json body
# The servers and wrk share this machine's cores, so compare the rows with each other, not
# with another machine's.
set -euo pipefail

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found: installing it" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --example server --example bare_server >&2

PIDS=()
WORK=$(mktemp -d)
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# start NAME COMMAND...: starts a server on a free port; sets URL to its base URL.
URL=
start() {
    local name=$1
    shift
    "$@" --bind 127.0.0.1:0 >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    local pid=$!
    for _ in $(seq 1 100); do
        if grep -q "listening on http://" "$WORK/$name.out" 2>/dev/null; then
            URL=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$WORK/$name.out" | head -1)
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited:" >&2
            cat "$WORK/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not start listening" >&2
    exit 1
}

# stop_last: stops the most recently started server.
stop_last() {
    local last=$((${#PIDS[@]} - 1))
    kill "${PIDS[$last]}" 2>/dev/null || true
    wait "${PIDS[$last]}" 2>/dev/null || true
    unset "PIDS[$last]"
    PIDS=("${PIDS[@]}")
}

# bench LABEL URL KEY: one wrk run; prints "LABEL|req/s|p99|non-2xx".
bench() {
    local label=$1 url=$2 key=$3 out
    out=$(wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "X-API-Key: $key" "$url/api/simple")
    echo "$out" >"$WORK/$label.wrk"
    local rps p99 non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
    echo "$label|$rps|$p99|${non2xx:-0}"
}

ROWS=()
start bare "$TARGET_DIR/release/examples/bare_server"
ROWS+=("$(bench "bare axum" "$URL" enterprise-demo-key)")
stop_last

start tollgate env TOLLGATE_TIERS__ENTERPRISE__REQUESTS_PER_MINUTE=60000000000 \
    TOLLGATE_TIERS__ENTERPRISE__BURST=1000000 RUST_LOG=warn \
    "$TARGET_DIR/release/examples/server"
ROWS+=("$(bench "tollgate, admitted (enterprise-demo-key)" "$URL" enterprise-demo-key)")
ROWS+=("$(bench "tollgate, rejected (free-demo-key)" "$URL" free-demo-key)")
stop_last

BARE_RPS=$(cut -d'|' -f2 <<<"${ROWS[0]}")
echo
echo "## HTTP load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET /api/simple on 127.0.0.1 ($(nproc) cores)"
echo
echo "| run | req/s | p99 latency | non-2xx | req/s vs bare |"
echo "| --- | ---: | ---: | ---: | ---: |"
for row in "${ROWS[@]}"; do
    IFS='|' read -r label rps p99 non2xx <<<"$row"
    ratio=$(awk -v a="$rps" -v b="$BARE_RPS" 'BEGIN { printf "%.2f", a / b }')
    echo "| $label | $rps | $p99 | $non2xx | $ratio |"
done
