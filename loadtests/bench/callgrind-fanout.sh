#!/usr/bin/env bash
# Instructions per fan-out delivery (issue 16), counted by valgrind's
# callgrind: the same total for the same binary and inputs whatever else
# the machine is doing, so a change to the hot path can be judged on a
# noisy machine.
#
# One node on the embedded broker, SUBSCRIBERS subscribers and the
# publisher on it, RATE messages/s (slow enough that every message is
# delivered on its own under valgrind). It runs twice, with FEW and with
# MANY messages; the difference of the two totals over the difference of
# the deliveries is the cost of a delivery, with start-up, connecting and
# shutting down cancelled out. The longer run's profile is kept, and its
# functions with the most inclusive instructions are printed.
#
#   loadtests/bench/callgrind-fanout.sh [subscribers few many rate]   (default 200 20 60 2)
#   RELAY_BINARY=path/to/chat-relay to count another build.
set -euo pipefail
cd "$(dirname "$0")/../.."
subscribers="${1:-200}"
few="${2:-20}"
many="${3:-60}"
rate="${4:-2}"
relay="${RELAY_BINARY:-target/release/chat-relay}"
out="${BENCH_OUT:-target/callgrind-fanout}"

command -v valgrind > /dev/null || { echo "needs valgrind: apt-get install valgrind"; exit 1; }
[ -x "$relay" ] || { echo "$relay not found: cargo build --release --bin chat-relay"; exit 1; }
[ -x target/release/relay-load ] || cargo build --release --quiet -p relay-load
mkdir -p "$out"
ulimit -n 20000

count() {
  local messages="$1" port pid
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  env -i PATH="$PATH" RELAY_LISTEN="127.0.0.1:$port" RELAY_AUTH=none RELAY_PUBLISH_RATE=1000000 RELAY_MAX_CONNECTIONS_PER_CLIENT=0 \
    RELAY_DRAIN_SECS=1 RUST_LOG=warn RELAY_LOG_FORMAT=json \
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$messages.out" "$relay" \
    > "$out/relay.$messages.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064
  trap "kill -9 $pid 2> /dev/null || true" EXIT
  for _ in $(seq 1 600); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
    kill -0 "$pid" 2> /dev/null || { cat "$out/relay.$messages.log"; exit 1; }
    sleep 0.1
  done
  target/release/relay-load latency --publish-url "ws://127.0.0.1:$port/v1/ws" \
    --subscribe-url "ws://127.0.0.1:$port/v1/ws" --subscribers "$subscribers" \
    --messages "$messages" --rate "$rate" > "$out/latency.$messages.txt"
  kill -TERM "$pid"
  wait "$pid" || true
  trap - EXIT
  grep -E '^(summary|totals):' "$out/callgrind.$messages.out" | head -1 | awk '{print $2}'
}

small=$(count "$few")
large=$(count "$many")
deliveries=$(( (many - few) * subscribers ))
python3 - "$small" "$large" "$deliveries" "$relay" "$subscribers" "$few" "$many" "$rate" <<'PY'
import sys
small, large, deliveries = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
relay, subscribers, few, many, rate = sys.argv[4:9]
print(f"{relay}: {subscribers} subscribers, {few} and {many} messages at {rate}/s")
print(f"instructions: {small:,} and {large:,}; per delivery: {(large - small) / deliveries:,.0f}")
PY
callgrind_annotate --inclusive=yes "$out/callgrind.$many.out" 2> /dev/null | sed -n '1,/^-- Auto/p' | grep -E '^ *[0-9,]+ ' | head -40 > "$out/top-inclusive.txt" || true
echo "profile: $out/callgrind.$many.out (top functions: $out/top-inclusive.txt)"
