#!/usr/bin/env bash
# Measures a dump import end to end on the local stack: `bookworm sim dump` of a synthetic
# catalogue, `bookworm import` of its all-types file onto fresh topics, one graph writer, and
# the time until the writer has written every row. Prints the figures; run it alone on the
# machine (it is a measurement), after `cargo build --release`.
#
#   scripts/import-measure.sh [WORKS] [AUTHORS]      # default 33000 works, 10000 authors
#   WRITERS=2 scripts/import-measure.sh              # graph writers sharing the topics
#   EDITIONS_PER_WORK=1 scripts/import-measure.sh    # most editions per work (default 3)
#
# With STACK_DIR set (as `scripts/bench.sh import` does, on a stack of its own), it also reads
# Neo4j's store size before and after, with Neo4j stopped (a clean stop is a checkpoint).
# Every 10 s it samples the rows written; "sustained" is the median of those 10 s rates
# between 10 % and 90 % of the rows, so the start-up and the tail do not count.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/stack.sh env)"
works=${1:-33000}
authors=${2:-10000}
bin=target/release
run=measure-$(date +%s)
dir=$(mktemp -d)
writers=${WRITERS:-1}
editions=${EDITIONS_PER_WORK:-3}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
export KAFKA_FRONTIER_TOPIC=$run.frontier KAFKA_RESULTS_TOPIC=$run.results \
  KAFKA_EDGES_TOPIC=$run.edges KAFKA_DLQ_TOPIC=$run.dlq KAFKA_GRAPH_DLQ_TOPIC=$run.graph-dlq

# Neo4j's store bytes, read with Neo4j stopped; nothing without a stack of our own.
store_bytes() {
  [[ -n ${STACK_DIR:-} ]] || { echo 0; return; }
  bash scripts/stack.sh stop neo4j > /dev/null
  du -sb "$STACK_DIR/data/neo4j/home/data/databases/neo4j" | cut -f1
  bash scripts/stack.sh start neo4j > /dev/null
}
store_before=$(store_bytes)

id_base=$(( 1000000000 + ($(date +%s) % 100000) * 10000000 ))
start=$(date +%s.%N)
"$bin/bookworm" sim dump --out "$dir" --works "$works" --authors "$authors" \
  --subjects 400 --editions-per-work "$editions" --id-base "$id_base" > "$dir/dump.json"
dumped=$(date +%s.%N)
"$bin/bookworm" topics create --partitions 4 > /dev/null

ports=()
for i in $(seq "$writers"); do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ports+=("$port")
  METRICS_ADDR=127.0.0.1:$port KAFKA_GROUP_ID=$run-graph "$bin/graph-writer" > "$dir/writer-$i.log" 2>&1 &
  pids+=($!)
done
written() {
  local total=0 n
  for port in "${ports[@]}"; do
    n=$(curl -s "127.0.0.1:$port/metrics" | awk -v n="relentless_graph_writer_$1_written_total" '$1==n {print int($2)}')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
# The rows written, sampled every 10 s into $dir/samples (epoch seconds, rows).
sampler() {
  while sleep 10; do
    echo "$(date +%s.%N) $(( $(written results) + $(written edges) ))" >> "$dir/samples"
  done
}
/usr/bin/time -f "%M" -o "$dir/import.rss" "$bin/bookworm" import \
  "$dir"/ol_dump_2021-03-31.txt.gz --crawl-id "$run" --progress-interval 30s > "$dir/import.json" &
importer=$!
sampler &
pids+=($!)
wait "$importer"
imported=$(date +%s.%N)
nodes=$(python3 -c "import json;d=json.load(open('$dir/import.json'));print(d['nodes']+d['subjects'])")
edges=$(python3 -c "import json;d=json.load(open('$dir/import.json'));print(d['edges'])")
until [ "$(written results || echo 0)" -ge "$nodes" ] && [ "$(written edges || echo 0)" -ge "$edges" ]; do
  sleep 1
done
done_at=$(date +%s.%N)
store_after=$(store_bytes)
writer_rss=$(for pid in "${pids[@]}"; do awk '/VmHWM/ {print $2}' "/proc/$pid/status"; done | sort -n | tail -1)
# Batch transactions redone (deadlock victims and the like), all writers together.
retries=0
for port in "${ports[@]}"; do
  n=$(curl -s "127.0.0.1:$port/metrics" | awk '$1 ~ /^relentless_graph_writer_transaction_retries_total/ {t += $2} END {print int(t)}')
  retries=$((retries + ${n:-0}))
done
# CPU seconds (user + system) of the graph writers together, the last pid being the sampler.
writer_cpu=$(for pid in "${pids[@]:0:$writers}"; do awk '{print $14 + $15}' "/proc/$pid/stat"; done |
  awk -v hz="$(getconf CLK_TCK)" '{t += $1} END {printf "%.1f", t / hz}')
python3 - "$start" "$dumped" "$imported" "$done_at" "$nodes" "$edges" "$writer_rss" "$dir" "$(cat "$dir/import.rss")" "$store_before" "$store_after" "$writer_cpu" "$retries" <<'EOF'
import json, statistics, sys
start, dumped, imported, done = map(float, sys.argv[1:5])
nodes, edges, rss = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
d = json.load(open(sys.argv[8] + "/dump.json"))
rows = nodes + edges
print(f"dump:   {d['records']} records in {dumped - start:.1f} s ({d['records'] / (dumped - start):.0f} records/s)")
print(f"import: published in {imported - dumped:.1f} s ({d['records'] / (imported - dumped):.0f} lines/s)")
print(f"graph:  {nodes} nodes + {edges} relationships = {rows} rows in {done - dumped:.1f} s "
      f"from the import's start: {rows / (done - dumped):.0f} rows/s into Neo4j")
print(f"peak RSS: graph writer (largest) {rss / 1024:.0f} MiB, importer {int(sys.argv[9]) / 1024:.0f} MiB")
print(f"graph writers' CPU: {sys.argv[12]} s together, {float(sys.argv[12]) * 1e6 / rows:.1f} µs per row; "
      f"{sys.argv[13]} batch transactions redone")
try:
    samples = [tuple(map(float, line.split())) for line in open(sys.argv[8] + "/samples")]
except FileNotFoundError:
    samples = []
rates = [(r1 - r0) / (t1 - t0) for (t0, r0), (t1, r1) in zip(samples, samples[1:])
         if rows * 0.1 <= r0 and r1 <= rows * 0.9 and t1 > t0]
if rates:
    print(f"sustained: median {statistics.median(rates):.0f} rows/s over {len(rates)} 10-s samples "
          f"between 10 % and 90 % of the rows (min {min(rates):.0f}, max {max(rates):.0f})")
store = int(sys.argv[11]) - int(sys.argv[10])
if store > 0:
    print(f"neo4j store: {store / 2**20:.0f} MiB more, {store / nodes:.0f} bytes per node")
EOF
