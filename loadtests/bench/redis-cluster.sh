#!/usr/bin/env bash
# Redis Cluster benchmark (issue 12), everything on loopback in one run, the
# same load on three deployments, each with two relay nodes:
#   single   one Redis, RELAY_REDIS_CLUSTER off (the baseline);
#   shard1   a cluster of one primary holding every slot;
#   shard3   a cluster of three primaries.
# For each: acked publishes per second through node 1 (relay-load
# throughput over many rooms), Redis CPU per publish (user + system time of
# every redis-server, from /proc), the share of publishes each primary ran
# (INFO commandstats), and cross-node publish-to-delivery latency at a
# steady rate below saturation (publisher on node 1, subscribers on node 2).
# The three deployments run in turn, in rounds (BENCH_ROUNDS, default 3), so
# that a busy moment of the machine hits all three alike; the table gives
# each figure's median over the rounds and its range.
#
#   loadtests/bench/redis-cluster.sh [messages]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/../.."
messages="${1:-200000}"
rooms="${BENCH_ROOMS:-96}"
base_port="${BENCH_REDIS_PORT:-16500}"

command -v redis-server >/dev/null || { echo "needs redis-server and redis-cli: apt-get install redis-server"; exit 1; }
cargo build --release --quiet --bin chat-relay
cargo build --release --quiet -p relay-load
pids=()
dirs=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for dir in "${dirs[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

redis_pids=()
start_redis() { # port, cluster (yes/no)
  local dir; dir=$(mktemp -d); dirs+=("$dir")
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --cluster-enabled "$2" --cluster-config-file "$dir/nodes.conf" --cluster-require-full-coverage no >/dev/null &
  pids+=($!); redis_pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
wait_ok() {
  for _ in $(seq 100); do redis-cli -p "$1" cluster info | grep -q cluster_state:ok && return; sleep 0.1; done
  echo "cluster on $1 never became ok"; exit 1
}
# Not in a $(...) subshell: the pid must reach the cleanup trap.
start_node() { # log, redis url, cluster (true/false)
  REDIS_URL="$2" RELAY_REDIS_CLUSTER="$3" RELAY_AUTH=none RELAY_LISTEN=127.0.0.1:0 RELAY_LOG_FORMAT=json \
    RELAY_PUBLISH_RATE=1000000 RELAY_MAX_CONNECTIONS_PER_CLIENT=0 RUST_LOG=warn,chat_relay=info \
    target/release/chat-relay >"$1" 2>&1 &
  pids+=($!); node_pids+=($!)
  for _ in $(seq 100); do grep -q '"listen"' "$1" 2>/dev/null && break; sleep 0.05; done
  node_address=$(grep -o '"listen":"[^"]*"' "$1" | head -1 | cut -d'"' -f4)
}
cpu_ticks() { # pids...: user and system clock ticks, summed
  local user=0 system=0
  for pid in "$@"; do
    read -r -a stat < <(sed 's/^.*) //' "/proc/$pid/stat")
    user=$((user + stat[11])); system=$((system + stat[12]))
  done
  echo "$user $system"
}
evalsha_calls() { # port
  redis-cli -p "$1" info commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' | sed 's/.*calls=\([0-9]*\).*/\1/' || echo 0
}

results=$(mktemp); dirs+=("$results")
rounds="${BENCH_ROUNDS:-3}"
for round in $(seq "$rounds"); do
for mode in single shard1 shard3; do
  redis_pids=(); node_pids=()
  ports=()
  case "$mode" in
    single)
      port=$base_port; start_redis "$port" no; ports=("$port"); url="redis://127.0.0.1:$port"; cluster=false ;;
    shard1)
      port=$((base_port + 10)); start_redis "$port" yes
      redis-cli -p "$port" cluster addslotsrange 0 16383 >/dev/null; wait_ok "$port"
      ports=("$port"); url="redis://127.0.0.1:$port"; cluster=true ;;
    shard3)
      for n in 0 1 2; do start_redis $((base_port + 20 + n)) yes; ports+=($((base_port + 20 + n))); done
      redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
      for port in "${ports[@]}"; do wait_ok "$port"; done
      url="redis://127.0.0.1:${ports[0]}"; cluster=true ;;
  esac
  logs=$(mktemp -d); dirs+=("$logs")
  start_node "$logs/node1.log" "$url" "$cluster"; node1="$node_address"
  start_node "$logs/node2.log" "$url" "$cluster"; node2="$node_address"
  before_calls=(); for port in "${ports[@]}"; do before_calls+=("$(evalsha_calls "$port")"); done
  read -r ru0 rs0 < <(cpu_ticks "${redis_pids[@]}")
  read -r nu0 ns0 < <(cpu_ticks "${node_pids[@]}")
  throughput=$(target/release/relay-load throughput --url "ws://$node1/v1/ws" --connections 96 --window 16 \
    --rooms "$rooms" --messages "$messages" --json)
  read -r ru1 rs1 < <(cpu_ticks "${redis_pids[@]}")
  read -r nu1 ns1 < <(cpu_ticks "${node_pids[@]}")
  shares=()
  for index in "${!ports[@]}"; do
    shares+=($(( $(evalsha_calls "${ports[$index]}") - before_calls[index] )))
  done
  latency=$(target/release/relay-load latency --publish-url "ws://$node1/v1/ws" --subscribe-url "ws://$node2/v1/ws" \
    --subscribers 100 --messages 5000 --rate 500 --json)
  echo "$mode|$throughput|$((ru1 - ru0)) $((rs1 - rs0))|$((nu1 - nu0)) $((ns1 - ns0))|${shares[*]}|$latency" >>"$results"
  for pid in "${node_pids[@]}" "${redis_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
done
done

python3 - "$results" "$messages" "$rooms" "$rounds" <<'PY'
import json, os, platform, statistics, sys
rows = [line.rstrip("\n").split("|") for line in open(sys.argv[1])]
hz = os.sysconf("SC_CLK_TCK")
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
print(f"machine: {os.cpu_count()} cores, {cpu}")
print(f"load: {sys.argv[2]} publishes over {sys.argv[3]} rooms (one per connection), 96 connections x 16 in flight, to node 1; "
      f"latency: 500 msg/s to 100 subscribers on node 2; {sys.argv[4]} rounds, median (min-max)\n")
figures = {}
for mode, throughput, redis_cpu, node_cpu, shares, latency in rows:
    throughput, latency = json.loads(throughput), json.loads(latency)
    acked = throughput["acked"]
    ru, rs = (int(x) / hz * 1e6 / acked for x in redis_cpu.split())
    nu, ns = (int(x) / hz * 1e6 / acked for x in node_cpu.split())
    calls = [int(x) for x in shares.split()]
    total = sum(calls) or 1
    entry = figures.setdefault(mode, {"rate": [], "redis": [], "node": [], "shares": [], "p50": [], "p99": []})
    entry["rate"].append(throughput["publishes_per_second"])
    entry["redis"].append((ru, rs))
    entry["node"].append((nu, ns))
    entry["shares"].append([100 * c / total for c in calls])
    entry["p50"].append(latency["p50_ms"])
    entry["p99"].append(latency["p99_ms"])
def span(values, fmt):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"
print("| deployment | publishes/s | vs single | Redis CPU per publish, user + sys | node CPU per publish, user + sys | share per primary | cross-node p50 | cross-node p99 |")
print("|---|---|---|---|---|---|---|---|")
base = statistics.median(figures["single"]["rate"])
for mode, entry in figures.items():
    rate = statistics.median(entry["rate"])
    redis = " + ".join(f"{statistics.median(part):.1f}" for part in zip(*entry["redis"]))
    node = " + ".join(f"{statistics.median(part):.1f}" for part in zip(*entry["node"]))
    shares = " / ".join(f"{statistics.median(part):.0f}%" for part in zip(*entry["shares"]))
    print(f"| {mode} | {span(entry['rate'], '{:,.0f}')} | {rate / base:.2f}x | {redis} us | {node} us | {shares} | "
          f"{span(entry['p50'], '{:.2f}')} ms | {span(entry['p99'], '{:.2f}')} ms |")
PY
