#!/usr/bin/env bash
# The chaos suite (tests/chaos.rs, issue 7), alone: crawls of a simulated catalogue while
# faults are injected, each ending with the nothing-lost invariant. See docs/reliability.md.
#
#   scripts/chaos.sh            every scenario, including those that stop Kafka, Neo4j,
#                               Redis and a Squid (#[ignore]d in scripts/test.sh), one at a time
#   scripts/chaos.sh fast       only the fast_* scenarios (they also run in scripts/test.sh)
#   scripts/chaos.sh stops      only the stops_* scenarios
#   CHAOS_RUNS=3 scripts/chaos.sh fast   repeat (the suite must pass repeatably)
#   CHAOS_SEED=<n>              replay the random kill points a failing run printed
#
# Run it with nothing else using the stack: the stops_* scenarios stop shared services.
# CHAOS_STACK_SH names the stack.sh that manages the running stack (default: this checkout's).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

export CHAOS_STACK_SH=${CHAOS_STACK_SH:-$ROOT/scripts/stack.sh}
# The stack must be up already (scripts/stack.sh up): starting one from here could start a
# second copy from another checkout on the same ports.
if bash "$CHAOS_STACK_SH" status | grep -qw down; then
  bash "$CHAOS_STACK_SH" status >&2
  echo "the stack is not fully up: run bash $CHAOS_STACK_SH up first" >&2
  exit 1
fi
eval "$(bash "$CHAOS_STACK_SH" env)"

which=${1:-all}
runs=${CHAOS_RUNS:-1}
case $which in
  fast) args=(fast_ -- --test-threads=2) ;;
  stops) args=(stops_ -- --ignored --test-threads=1) ;;
  all) args=(-- --include-ignored --test-threads=1) ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

cargo build --bins
for run in $(seq 1 "$runs"); do
  echo "== chaos run $run of $runs ($which)"
  # --nocapture: the CHAOS REPORT / CHAOS RECOVERY lines are the figures of the table.
  cargo test --test chaos "${args[@]}" --nocapture 2>&1 |
    tee "target/chaos-run-$run.log" | grep -E '^(test |CHAOS|SIGKILL)|panicked|test result'
  grep -q 'test result: ok' "target/chaos-run-$run.log"
done
