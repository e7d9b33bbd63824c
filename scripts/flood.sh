#!/usr/bin/env bash
# A flood of new clients against the demo server (issue 11; CONTRACT.md, "Under a flood of new
# clients"): ADDRESSES distinct client addresses (half IPv4, half IPv6 /64s), one request each,
# written by a trusted proxy into X-Forwarded-For (the server trusts 127.0.0.0/8), against a
# memory store capped at MAX_KEYS states, while one identified client (an API key) spends its
# burst of 50 a request at a time through the flood.
#
#   scripts/flood.sh                                   # 1 000 000 addresses, max_keys 10 000
#   ADDRESSES=200000 MAX_KEYS=1000 CONCURRENCY=16 scripts/flood.sh
#
# Fails when a first-time client is refused, when the identified client is not answered
# exactly (X-RateLimit-Remaining 49 … 0, then 429), or when the server's resident memory grows
# by more than MAX_GROWTH_MIB from the first tenth of the flood (the store full) to its end.
# The server's /metrics is scraped at every tenth, as Prometheus would.
set -euo pipefail

ADDRESSES=${ADDRESSES:-1000000}
MAX_KEYS=${MAX_KEYS:-10000}
CONCURRENCY=${CONCURRENCY:-32}
MAX_GROWTH_MIB=${MAX_GROWTH_MIB:-16}
cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build --release --example server --example flood >&2

WORK=$(mktemp -d)
SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

cat >"$WORK/flood.toml" <<TOML
trusted_proxies = ["127.0.0.0/8"]
client_ip_header = "x-forwarded-for"

[tiers.anonymous]
requests_per_minute = 30
burst = 5

[tiers.partner]                     # refills 1 an hour: nothing comes back during the run
requests_per_hour = 1
burst = 50

[routes]
"/api/simple" = 1

[exempt]
routes = ["/metrics"]

[api_keys]
"flood-partner-key" = "partner"

[store]
max_keys = $MAX_KEYS
TOML

"$TARGET_DIR/release/examples/server" --config "$WORK/flood.toml" --bind 127.0.0.1:0 \
    >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER=$!
URL=
for _ in $(seq 1 100); do
    if grep -q "listening on http://" "$WORK/server.out" 2>/dev/null; then
        URL=$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$WORK/server.out" | head -1)
        break
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
        echo "the server exited:" >&2
        cat "$WORK/server.err" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not start" >&2; exit 1; }

echo "flood: $ADDRESSES addresses, max_keys $MAX_KEYS, $CONCURRENCY in flight, server pid $SERVER at $URL"
"$TARGET_DIR/release/examples/flood" --url "$URL" --pid "$SERVER" --addresses "$ADDRESSES" \
    --concurrency "$CONCURRENCY" --partner-key flood-partner-key --partner-burst 50 \
    --scrape /metrics --max-growth-mib "$MAX_GROWTH_MIB"
