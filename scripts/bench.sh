#!/usr/bin/env bash
# The capacity benchmark behind docs/performance.md, from a fresh machine: brings the local
# stack up, installs the plots' font if missing, builds the binaries in release mode and runs
# `bookworm bench` (which rewrites docs/perf/* and the generated part of docs/performance.md).
#
#   scripts/bench.sh                          the reduced grid (~15 minutes on two cores)
#   scripts/bench.sh --grid full              all 162 points (several hours)
#   scripts/bench.sh --workers 1,2 --limit 150 --proxies 3   any product of axes
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
