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

bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"
cargo build --release --bins
exec target/release/bookworm bench --stack-run-dir .stack/run "$@"
