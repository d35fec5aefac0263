#!/usr/bin/env bash
# The whole test suite, from a fresh machine: brings the local stack up (installing what is
# missing), then checks formatting and lints and runs every test against the real services.
#
#   scripts/test.sh            everything CI runs
#
# Tests that stop shared services (broker, Neo4j outages) are #[ignore]d here and run alone by
# scripts/chaos.sh, because they would disturb tests running in parallel.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Rust comes with the machine (rustup); the components are part of its default profile.
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
cargo fmt --version >/dev/null && cargo clippy --version >/dev/null

# Graphviz lets the `bookworm graph` test check its DOT output with `dot` itself; the bench
# test draws its plots with DejaVu Sans; the image test builds and runs the container image
# with podman (runc as its runtime: crun fails on these machines), its base made from
# Debian's packages by mmdebstrap (see scripts/image.sh).
missing=()
command -v dot >/dev/null || missing+=(graphviz)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v newuidmap >/dev/null || missing+=(uidmap)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

bash scripts/stack.sh up
eval "$(bash scripts/stack.sh env)"

cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo build --bins
bash scripts/api-fuzz.sh
# Two test threads: the machine has two cores, and the end-to-end tests run several
# processes each.
cargo test -- --test-threads=2
