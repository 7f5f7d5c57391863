#!/usr/bin/env bash
# Redis broker benchmark (issue 3), everything on loopback in one run:
#  1. the publish script straight from redis-benchmark (EVALSHA, -P 32): the ceiling;
#  2. the same publishes through one relay node over WebSocket (relay-load throughput);
#  3. cross-node publish-to-delivery latency (publisher on node 1, subscribers on node 2).
# Prints a Markdown table with the ratio relay / raw.
#
#   loadtests/bench/redis-publish.sh [messages]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/../.."
messages="${1:-200000}"
port="${BENCH_REDIS_PORT:-16480}"
body_bytes=64

command -v redis-server >/dev/null || { echo "needs redis-server and redis-benchmark: apt-get install redis-server"; exit 1; }
cargo build --release --quiet -p chat-relay -p relay-load
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# 1. Raw script rate, same keys, same tail size as the relay's frames.
# The node fills these placeholders with its settings (defaults here) and
# the message frame's separators (protocol::message_frame).
script=$(sed -e 's/@MAXLEN@/10000/' -e 's/@HISTORY_TTL_MS@/604800000/' -e 's/@IDEMPOTENCY_TTL_MS@/600000/' -e 's/@PUBLISH@/PUBLISH/' \
  -e 's/@AFTER_ID@/","prev":"/' -e 's/@AFTER_PREV@/",/' src/broker/redis/publish.lua)
sha=$(redis-cli -p "$port" SCRIPT LOAD "$script")
body=$(printf 'x%.0s' $(seq "$body_bytes"))
tail="\"from\":null,\"ts\":1732400000000,\"body\":\"$body\"}"
raw=$(redis-benchmark -p "$port" -n "$messages" -c 32 -P 32 -q \
  EVALSHA "$sha" 3 'relay:{raw}:s' 'relay:{raw}:i' 'relay:{raw}:c' 0 '{"type":"message","room":"raw","id":"' "$tail" '' \
  | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)

# 2. Through a relay node.
# Not in a $(...) subshell: the pid must reach the cleanup trap.
start_node() {
  local log="$1"
  REDIS_URL="redis://127.0.0.1:$port" RELAY_AUTH=none RELAY_LISTEN=127.0.0.1:0 RELAY_LOG_FORMAT=json \
    RELAY_PUBLISH_RATE=1000000 RUST_LOG=warn,chat_relay=info target/release/chat-relay >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q '"listen"' "$log" 2>/dev/null && break; sleep 0.05; done
  node_address=$(grep -o '"listen":"[^"]*"' "$log" | head -1 | cut -d'"' -f4)
}
logs=$(mktemp -d)
start_node "$logs/node1.log"; node1="$node_address"
start_node "$logs/node2.log"; node2="$node_address"
relay=$(target/release/relay-load throughput --url "ws://$node1/v1/ws" --connections 32 --window 32 --messages "$messages" --body-bytes "$body_bytes" --json)
relay_rate=$(echo "$relay" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["publishes_per_second"]))')

# 3. Cross-node latency at a steady rate.
latency=$(target/release/relay-load latency --publish-url "ws://$node1/v1/ws" --subscribe-url "ws://$node2/v1/ws" --subscribers 100 --messages 5000 --rate 1000 --json)

python3 - "$raw" "$relay_rate" "$latency" "$messages" <<'PY'
import json, sys, platform, os
raw, relay, latency, messages = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
print(f"machine: {os.cpu_count()} cores, {cpu}")
print(f"messages: {messages}, body 64 bytes, 1 room, 32 connections x 32 in flight\n")
print("| measure | value |")
print("| --- | --- |")
print(f"| publish script via redis-benchmark -P 32 | {raw:,.0f}/s |")
print(f"| publishes through one relay node (WebSocket, acked) | {relay:,.0f}/s |")
print(f"| relay / raw | {relay / raw:.0%} |")
print(f"| cross-node latency p50 / p99 / max (100 subscribers, 1000 msg/s) | {latency['p50_ms']:.2f} / {latency['p99_ms']:.2f} / {latency['max_ms']:.2f} ms |")
PY
