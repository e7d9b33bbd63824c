#!/usr/bin/env bash
# HTTP load test over loopback: the demo server (tollgate in front of every route, with the
# demo's observers: Prometheus metrics and near-quota alerts) against a bare axum server and a
# tower_governor server serving the same /api/simple handler, under wrk, in alternating rounds.
# Prints, per server, req/s and server CPU per request (from /proc), and for each the median
# over rounds of its ratio to the bare server in the same round. Installs wrk if it is missing;
# stops everything it starts.
#
#   scripts/load.sh                          # 7 rounds of 5 s per server, 2 wrk threads, 64 connections
#   ROUNDS=9 DURATION=10s CONNECTIONS=32 scripts/load.sh
#
# Servers (all GET /api/simple, all started once and left running; only one is loaded at a time):
#   bare                  examples/bare_server.rs: the handler alone
#   tollgate              examples/server (the demo), X-API-Key: enterprise-demo-key, the
#                         enterprise tier raised through the environment (TOLLGATE_TIERS__ENTERPRISE__*)
#                         so that every request is admitted; headers "both", metrics, alerts on
#   tower_governor        examples/governor_server.rs: GovernorLayer keyed by X-API-Key, admitting
#                         everything, its headers on
#   tollgate, rejected    the demo server with X-API-Key: free-demo-key (60/min, burst 10): all but
#                         a handful answered 429 with a problem+json body
# Round r runs the servers in this order, or reversed when r is odd, so that no server always
# follows the same one. CPU per request: the server process's CPU time (user + system, every
# thread, from /proc/PID/task/*/schedstat) over the run, divided by the requests wrk completed.
# wrk and the servers share this machine's cores: compare rows with each other (the ratios are
# per round, then the median), not with another machine's.
set -euo pipefail

ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found: installing it" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --example server --example bare_server --example governor_server >&2

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

# start NAME COMMAND...: starts a server on a free port; sets URL and PID to its base URL and
# process id.
URL=
PID=
start() {
    local name=$1
    shift
    "$@" --bind 127.0.0.1:0 >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 1 100); do
        if grep -q "listening on http://" "$WORK/$name.out" 2>/dev/null; then
            URL=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$WORK/$name.out" | head -1)
            return
        fi
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "$name exited:" >&2
            cat "$WORK/$name.err" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$name did not start listening" >&2
    exit 1
}

# cpu_ns PID: nanoseconds on CPU of every thread of PID so far.
cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ sum += $1 } END { printf "%.0f", sum }'
}

start bare "$TARGET_DIR/release/examples/bare_server"
BARE_URL=$URL BARE_PID=$PID
start tollgate env TOLLGATE_TIERS__ENTERPRISE__REQUESTS_PER_MINUTE=60000000000 \
    TOLLGATE_TIERS__ENTERPRISE__BURST=1000000 RUST_LOG=warn \
    "$TARGET_DIR/release/examples/server"
TOLLGATE_URL=$URL TOLLGATE_PID=$PID
start governor "$TARGET_DIR/release/examples/governor_server"
GOVERNOR_URL=$URL GOVERNOR_PID=$PID

NAMES=("bare axum" "tollgate (demo server)" "tower_governor" "tollgate, rejected (free-demo-key)")
URLS=("$BARE_URL" "$TOLLGATE_URL" "$GOVERNOR_URL" "$TOLLGATE_URL")
SERVER_PIDS=("$BARE_PID" "$TOLLGATE_PID" "$GOVERNOR_PID" "$TOLLGATE_PID")
KEYS=(enterprise-demo-key enterprise-demo-key enterprise-demo-key free-demo-key)

# One line per run in $WORK/runs: "ROUND|INDEX|req/s|requests|cpu_ns|p99|non-2xx".
: >"$WORK/runs"
run() {
    local round=$1 i=$2 out before after
    before=$(cpu_ns "${SERVER_PIDS[$i]}")
    out=$(wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "X-API-Key: ${KEYS[$i]}" \
        "${URLS[$i]}/api/simple")
    after=$(cpu_ns "${SERVER_PIDS[$i]}")
    local rps requests p99 non2xx
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
    echo "$round|$i|$rps|$requests|$((after - before))|$p99|${non2xx:-0}" >>"$WORK/runs"
    echo "round $round: ${NAMES[$i]}: $rps req/s" >&2
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# A short warm-up of each server (connections, caches, the limiter's first keys).
for i in "${!NAMES[@]}"; do
    wrk -t1 -c8 -d1s -H "X-API-Key: ${KEYS[$i]}" "${URLS[$i]}/api/simple" >/dev/null
done

for round in $(seq 0 $((ROUNDS - 1))); do
    if ((round % 2 == 0)); then order=(0 1 2 3); else order=(3 2 1 0); fi
    for i in "${order[@]}"; do
        run "$round" "$i"
    done
done

echo
echo "## HTTP load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET /api/simple on 127.0.0.1 ($(nproc) cores), $ROUNDS rounds"
echo
echo "load average (1, 5, 15 min) before the runs: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$WORK/runs" "${NAMES[@]}" <<'EOF'
import sys, statistics

path, names = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    r, i, rps, requests, cpu, p99, non2xx = line.strip().split("|")
    runs[(int(r), int(i))] = dict(rps=float(rps), cpu=int(cpu) / max(int(requests), 1), p99=p99, non2xx=int(non2xx))
rounds = sorted({r for r, _ in runs})
med = statistics.median
print("| server | req/s (median) | CPU µs/request (median) | p99 (median round) | non-2xx (total) | req/s vs bare (median of rounds) | CPU/request vs bare (median of rounds) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for i, name in enumerate(names):
    rows = [runs[(r, i)] for r in rounds]
    rps = med(x["rps"] for x in rows)
    cpu = med(x["cpu"] for x in rows) / 1000
    rps_ratio = med(runs[(r, i)]["rps"] / runs[(r, 0)]["rps"] for r in rounds)
    cpu_ratio = med(runs[(r, i)]["cpu"] / runs[(r, 0)]["cpu"] for r in rounds)
    p99 = sorted(rows, key=lambda x: x["rps"])[len(rows) // 2]["p99"]
    non2xx = sum(x["non2xx"] for x in rows)
    print(f"| {name} | {rps:,.0f} | {cpu:.2f} | {p99} | {non2xx} | {rps_ratio:.2f} | {cpu_ratio:.2f} |")
print()
print("Per round (req/s ratio to bare / CPU-per-request ratio to bare):")
print()
print("| round | " + " | ".join(names[1:]) + " |")
print("| ---: |" + " ---: |" * (len(names) - 1))
for r in rounds:
    cells = [f"{runs[(r, i)]['rps'] / runs[(r, 0)]['rps']:.2f} / {runs[(r, i)]['cpu'] / runs[(r, 0)]['cpu']:.2f}" for i in range(1, len(names))]
    print(f"| {r} | " + " | ".join(cells) + " |")
EOF
