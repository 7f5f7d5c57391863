#!/usr/bin/env bash
# What RELAY_REDIS_MIN_REPLICAS_ACKED=1 costs a publish: a Redis primary
# with one replica (both Debian's redis-server on loopback), one relay node
# acking on the primary's answer and one acking after WAIT 1, each driven
# by relay-load throughput in turn, three rounds. Prints a Markdown table
# (publishes acked per second, and the ratio).
#
#   loadtests/bench/replica-wait.sh [messages]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
messages="${1:-100000}"
primary="${BENCH_REDIS_PORT:-16490}"
replica=$((primary + 1))

command -v redis-server >/dev/null || { echo "needs redis-server: apt-get install redis-server"; exit 1; }
cargo build --release --quiet -p chat-relay -p relay-load
pids=()
data=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$data" ]; then rm -rf "$data"; fi
}
trap cleanup EXIT

# The replica's full sync writes an RDB file: keep it out of the tree.
data=$(mktemp -d)
redis-server --port "$primary" --bind 127.0.0.1 --dir "$data" --save '' --appendonly no --protected-mode no >/dev/null &
pids+=($!)
redis-server --port "$replica" --bind 127.0.0.1 --dir "$data" --dbfilename replica.rdb --save '' --appendonly no --protected-mode no \
  --replicaof 127.0.0.1 "$primary" >/dev/null &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$primary" info replication 2>/dev/null | grep -q 'connected_slaves:1' && break
  sleep 0.1
done

logs="$data"
start_node() {
  local log="$1" acked="$2"
  REDIS_URL="redis://127.0.0.1:$primary" RELAY_AUTH=none RELAY_LISTEN=127.0.0.1:0 RELAY_LOG_FORMAT=json \
    RELAY_PUBLISH_RATE=1000000 RELAY_REDIS_MIN_REPLICAS_ACKED="$acked" RUST_LOG=warn,chat_relay=info \
    target/release/chat-relay >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q '"listen"' "$log" 2>/dev/null && break; sleep 0.05; done
  node_address=$(grep -o '"listen":"[^"]*"' "$log" | head -1 | cut -d'"' -f4)
}
start_node "$logs/plain.log" 0; plain="$node_address"
start_node "$logs/wait.log" 1; waited="$node_address"

rate() {
  target/release/relay-load throughput --url "ws://$1/v1/ws" --connections 32 --window 32 \
    --messages "$messages" --body-bytes 64 --json |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["publishes_per_second"]))'
}
results=()
for round in 1 2 3; do
  results+=("$(rate "$plain") $(rate "$waited")")
done

python3 - "$messages" "${results[@]}" <<'PY'
import os, platform, statistics, sys
messages, rounds = sys.argv[1], [tuple(map(float, r.split())) for r in sys.argv[2:]]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
print(f"machine: {os.cpu_count()} cores, {cpu}; Redis primary + 1 replica on loopback")
print(f"messages: {messages} a round, body 64 bytes, 1 room, 32 connections x 32 in flight\n")
print("| round | acked on the primary's answer | acked after WAIT 1 | ratio |")
print("| --- | --- | --- | --- |")
for index, (plain, waited) in enumerate(rounds, 1):
    print(f"| {index} | {plain:,.0f}/s | {waited:,.0f}/s | {waited / plain:.0%} |")
plain = statistics.median(r[0] for r in rounds)
waited = statistics.median(r[1] for r in rounds)
print(f"| median | {plain:,.0f}/s | {waited:,.0f}/s | {waited / plain:.0%} |")
PY
