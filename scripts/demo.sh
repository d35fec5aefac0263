#!/usr/bin/env bash
# The main job: a whole crawl, end to end, on this machine.
#
#   scripts/demo.sh           offline: crawls the Open Library simulator (no internet needed)
#   scripts/demo.sh --live    crawls openlibrary.org itself, politely (robots.txt obeyed);
#                             needs USER_AGENT set to your application and contact
#
# Brings the local stack up (installing what is missing), builds in release mode, starts the
# simulator, two workers, a graph writer and the API, seeds a crawl from a work and from free
# text, shows its progress until it is done, prints a summary, and stops what it started.
# Environment: DEMO_DEPTH (default 2), DEMO_WORKS (simulated catalogue size, default 600).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

LIVE=false
[[ ${1:-} == --live ]] && LIVE=true
if $LIVE && [[ -z ${USER_AGENT:-} ]]; then
  echo "demo --live: set USER_AGENT to your application and contact first," >&2
  echo "  e.g. USER_AGENT='MyCrawler/1.0 (you@example.org)' scripts/demo.sh --live" >&2
  echo "  (Open Library contacts the operator it names; the worker refuses the built-in one)" >&2
  exit 2
fi
DEPTH=${DEMO_DEPTH:-2}
WORKS=${DEMO_WORKS:-600}

say() { printf '\n== %s\n' "$*"; }

say "local stack"
bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"

say "release build"
cargo build --release --bins
BIN=$ROOT/target/release

RUN=$ROOT/.stack/demo/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$ROOT/.stack/prometheus/targets/demo.json"
}
trap stop_all EXIT

# Each demo gets its own topics and groups, so an earlier run's leftovers never mix in.
TAG=demo-$(date +%s)
export KAFKA_FRONTIER_TOPIC=$TAG.frontier KAFKA_RESULTS_TOPIC=$TAG.results \
  KAFKA_EDGES_TOPIC=$TAG.edges KAFKA_DLQ_TOPIC=$TAG.dlq KAFKA_GRAPH_DLQ_TOPIC=$TAG.graph-dlq
"$BIN/bookworm" topics create --partitions 6 >/dev/null

start() { # start <name> <command...>: in the background, log under $RUN
  local name=$1; shift
  "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  echo "started $name (pid $!, log $RUN/$name.log)"
}

wait_http() { # wait_http <url>: until it answers 200, at most a minute
  for _ in $(seq 1 240); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.25
  done
  echo "no answer from $1" >&2
  return 1
}

if $LIVE; then
  ORIGIN=https://openlibrary.org
  # openlibrary.org is reached directly: the local Squids leave from loopback addresses
  # only for loopback destinations, so they add nothing but a hop here.
  export PROXY_POOL=direct EGRESS_RATE_PER_MINUTE=60 EGRESS_BURST=5
  SEEDS=("/works/OL45804W" "fantastic mr fox")
else
  say "Open Library simulator"
  SIM_PORT=18090
  ORIGIN=http://127.0.0.1:$SIM_PORT
  # Its own keys (an id base of this run's clock) keep this demo's graph apart from earlier
  # runs in the same Neo4j. Open Library's limits are on (180/min per IP, burst 25; 400/min
  # per User-Agent): three proxies at 150/min each and the workers' User-Agent budget of
  # 360/min (USER_AGENT_RATE_PER_MINUTE) keep the crawl polite and free of 429s.
  ID_BASE=$(( ($(date +%s) % 100000) * 100000 ))
  start sim "$BIN/bookworm" sim --addr "127.0.0.1:$SIM_PORT" --id-base "$ID_BASE" \
    --works "$WORKS" --authors $((WORKS / 3)) --subjects 60
  wait_http "$ORIGIN/robots.txt"
  FIRST=/works/OL$((ID_BASE + 1))W
  TITLE=$(curl -sf "$ORIGIN$FIRST.json" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["title"].split()[:2]))')
  SEEDS=("$FIRST" "$TITLE")
  export EGRESS_RATE_PER_MINUTE=150 EGRESS_BURST=10
fi
export OPENLIBRARY_BASE_URL=$ORIGIN EGRESS_REDIS_PREFIX=$TAG

say "services"
start worker-1 env KAFKA_GROUP_ID=$TAG-workers METRICS_ADDR=127.0.0.1:9101 WORKER_NAME=demo-worker-1 "$BIN/worker"
start worker-2 env KAFKA_GROUP_ID=$TAG-workers METRICS_ADDR=127.0.0.1:9111 WORKER_NAME=demo-worker-2 "$BIN/worker"
start graph-writer env KAFKA_GROUP_ID=$TAG-graph METRICS_ADDR=127.0.0.1:9102 "$BIN/graph-writer"
start api env API_ADDR=127.0.0.1:8080 "$BIN/bookworm" serve
# The second worker's metrics for Prometheus (the stack's file_sd job).
mkdir -p "$ROOT/.stack/prometheus/targets"
echo '[{"targets": ["127.0.0.1:9111"], "labels": {"job": "worker"}}]' >"$ROOT/.stack/prometheus/targets/demo.json"
for url in http://127.0.0.1:8080/readyz http://127.0.0.1:9101/readyz http://127.0.0.1:9111/readyz http://127.0.0.1:9102/readyz; do
  wait_http "$url"
done

say "crawl of ${SEEDS[*]} to depth $DEPTH"
CRAWL=$("$BIN/bookworm" seed --max-depth "$DEPTH" "${SEEDS[@]}")
echo "crawl id: $CRAWL"
started=$SECONDS
"$BIN/bookworm" status "$CRAWL" --watch

say "summary"
"$BIN/bookworm" summary "$CRAWL" --wait 120s
cat <<EOF

  time           $((SECONDS - started)) s from seed to done
  metrics        http://127.0.0.1:9101/metrics (workers :9101 and :9111, graph writer :9102, API :8080)
  Prometheus     http://127.0.0.1:9090 (e.g. rate(relentless_worker_egress_requests_total[1m]))
  the graph      target/release/bookworm graph ${SEEDS[0]} --depth 2 --format dot | dot -Tsvg > graph.svg
                 or in Neo4j: MATCH (n) WHERE '$CRAWL' IN n.crawls RETURN n LIMIT 200
  logs           $RUN
EOF
# What the crawl cost Open Library, from the workers' own counters: requests sent against
# the User-Agent budget, and how many records the cache answered instead.
python3 - "$((SECONDS - started))" http://127.0.0.1:9101/metrics http://127.0.0.1:9111/metrics <<'PY'
import re, sys, urllib.request
seconds, urls = max(int(sys.argv[1]), 1), sys.argv[2:]
sent = hits = lookups = 0.0
for url in urls:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        m = re.match(r'(\w+)(\{[^}]*\})? ([0-9.e+]+)$', line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "relentless_worker_egress_requests_total":
            sent += value
        elif name == "relentless_worker_record_cache_lookups_total":
            lookups += value
            hits += value if 'result="hit"' in labels else 0
print("  User-Agent     %d requests in %d s: %.0f/min of the 360/min budget (USER_AGENT_RATE_PER_MINUTE)"
      % (sent, seconds, sent * 60 / seconds))
print("  record cache   %d of %d lookups answered from the cache (%.0f%%; a second crawl of the same seeds is almost free)"
      % (hits, lookups, 100 * hits / lookups if lookups else 0))
PY
if ! $LIVE; then
  curl -sf "$ORIGIN/_sim/stats" | python3 -c 'import json,sys
s=json.load(sys.stdin)
print("  Open Library   the simulator answered %d requests, %d of them 429" % (s["requests"], s["rate_limited"]))
for ip, v in sorted(s["per_ip"].items()):
    print("                 from %s: %d requests, at most %d in any 60 s, %d rate-limited" % (ip, v["requests"], v["max_requests_in_any_60s"], v["rate_limited"]))
for ua, v in sorted(s.get("per_user_agent", {}).items()):
    if isinstance(v, dict):
        print("                 as %s: %d requests, at most %d in any 60 s, from %d IPs" % (ua.split(" ")[0], v["requests"], v["max_requests_in_any_60s"], v["distinct_ips"]))'
fi
