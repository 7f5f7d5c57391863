#!/usr/bin/env bash
# STOMP fan-out (issue 13), on loopback, the same load on three systems:
#   relay        chat-relay, two nodes on one Redis, the JSON protocol (the
#                baseline);
#   relay-stomp  the same deployment, every client on /v1/stomp;
#   rabbitmq     one RabbitMQ node with Web-STOMP (Debian's rabbitmq-server),
#                the STOMP-over-WebSocket broker Spring teams run.
# One room, SUBSCRIBERS subscribers (spread over the nodes), one publisher
# at RATE messages/s for MESSAGES messages: below saturation, so latency is
# delivery and not a queue. The systems run in turn, in rounds
# (BENCH_ROUNDS, default 3), so a busy moment hits all alike; the table
# gives each figure's median over the rounds and its range.
#
#   loadtests/bench/stomp.sh [subscribers messages rate]   (default 2000 150 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
subscribers="${1:-2000}"
messages="${2:-150}"
rate="${3:-5}"
rounds="${BENCH_ROUNDS:-3}"
out="${BENCH_OUT:-target/stomp-bench}"

[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { echo "needs RabbitMQ: apt-get install rabbitmq-server"; exit 1; }
cargo build --release --quiet --bin chat-relay
cargo build --release --quiet -p relay-load
rm -rf "$out"
for round in $(seq 1 "$rounds"); do
  target/release/relay-load run --systems relay,relay-stomp,rabbitmq --scenarios fanout \
    --fanout-size "$subscribers,$messages,$rate" --require-exact --out "$out/round-$round" > "$out-round-$round.md"
  # RabbitMQ's port mapper outlives its node; it holds no state.
  pkill -x epmd 2>/dev/null || true
done

python3 - "$out" "$rounds" "$subscribers" "$rate" <<'PY'
import json, statistics, sys
out, rounds, subscribers, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = {}
for round in range(1, rounds + 1):
    report = json.load(open(f"{out}/round-{round}/results.json"))
    for scenario in report["scenarios"]:
        for outcome in scenario["outcomes"]:
            rows.setdefault(outcome["system"], []).append(outcome)
def cell(values, fmt):
    values = sorted(values)
    median = statistics.median(values)
    return f"{fmt(median)} ({fmt(values[0])}–{fmt(values[-1])})" if len(values) > 1 else fmt(median)
base = statistics.median(o["cpu_seconds_per_million_deliveries"] for o in rows["relay"])
print(f"{subscribers} subscribers, {rate} messages/s ({subscribers * rate:,} deliveries/s), {rounds} rounds, medians (range)\n")
print("| system | deliveries | lost / doubled / out of order | p50 ms | p99 ms | node CPU per delivery | vs JSON |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for system, outcomes in rows.items():
    cpu = [o["cpu_seconds_per_million_deliveries"] for o in outcomes]
    faults = sum(o["correctness"]["lost"] + o["correctness"]["duplicated"] + o["correctness"]["out_of_order"] for o in outcomes)
    print(f"| {outcomes[0]['system']} | {sum(o['deliveries'] for o in outcomes):,} | {faults} | "
          f"{cell([o['latency_ms']['p50'] for o in outcomes], lambda v: f'{v:.1f}')} | "
          f"{cell([o['latency_ms']['p99'] for o in outcomes], lambda v: f'{v:.1f}')} | "
          f"{cell(cpu, lambda v: f'{v:.1f} µs')} | {statistics.median(cpu) / base:.2f}x |")
PY
