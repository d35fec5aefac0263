#!/usr/bin/env bash
# The capacity benchmark behind docs/performance.md, from a fresh machine: brings the local
# stack up, installs the plots' font if missing, builds the binaries in release mode and runs
# `bookworm bench` (which rewrites docs/perf/* and the generated part of docs/performance.md).
#
#   scripts/bench.sh                          the reduced grid (~20 minutes on two cores)
#   scripts/bench.sh --grid politeness        Open Library's limits only: 1, 4 and 8 workers
#                                             through the three proxies (~7 minutes)
#   scripts/bench.sh --grid full              all 162 points (several hours)
#   scripts/bench.sh --workers 1,2 --limit 150 --proxies 3   any product of axes
#   scripts/bench.sh scale                    the scale points: one crawl each of 10 k, 100 k
#                                             and 1 M nodes (~1.5 hours), their per-node
#                                             costs in docs/perf/scale.{md,csv}
#   scripts/bench.sh scale --nodes 10000,100000   smaller points only
#   scripts/bench.sh import [WORKS] [AUTHORS]  the dump import's scale point (default 1 M works,
#                                             300 k authors, one edition each: ~1 hour),
#                                             printed for docs/performance.md; WRITERS=N
#                                             graph writers (default 2)
#
# The scale and import points run on a stack of their own (STACK_DIR=.stack/scale, ports +100), wiped
# before the run and stopped after it, so its Redis, Neo4j and Kafka deltas are the crawls'
# alone, whatever the test stack holds.
#
# Every run rewrites the report from its own points only; to keep the committed one, point a
# partial run elsewhere: --out-dir /tmp/perf --report /tmp/perf/performance.md
# At rate-limited points the simulator enforces 180/min per IP and 400/min per User-Agent
# (--sim-rate-per-minute, --sim-ua-rate-per-minute) and the workers get 150/min per proxy and
# a 360/min User-Agent budget (--limit, --user-agent-rate-per-minute).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# The plots draw text with DejaVu Sans, read at run time (no font library is linked).
if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf && -z "${BENCH_FONT:-}" ]]; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get install -y --no-install-recommends fonts-dejavu-core
fi

# A stack of its own for a scale or import point, wiped first and stopped on exit.
own_stack() {
  export STACK_DIR=$ROOT/.stack/scale STACK_PORT_OFFSET=100
  bash scripts/stack.sh down
  rm -rf "$STACK_DIR/data"
  trap 'bash scripts/stack.sh down' EXIT
  bash scripts/stack.sh up
  eval "$(bash scripts/stack.sh env)"
  cargo build --release --bins
}

if [[ ${1:-} == import ]]; then
  shift
  # Neo4j's page cache sized for the store the point builds (~3.3 GB at the default size),
  # as a production Neo4j would be; the test stack keeps 512m.
  export NEO4J_PAGECACHE=${NEO4J_PAGECACHE:-4g}
  own_stack
  WRITERS=${WRITERS:-2} EDITIONS_PER_WORK=${EDITIONS_PER_WORK:-1} \
    bash scripts/import-measure.sh "${1:-1000000}" "${2:-300000}"
  exit
fi

if [[ ${1:-} == scale ]]; then
  shift
  own_stack
  target/release/bookworm bench-scale --stack-dir "$STACK_DIR" "$@"
  exit
fi

bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
cargo build --release --bins
exec target/release/bookworm bench --stack-run-dir .stack/run "$@"
