#!/usr/bin/env bash
# Evaluates every PromQL expression of the Grafana dashboard and of the alert rules
# against a real Prometheus (by default the local stack's, http://127.0.0.1:9090).
#
#   scripts/promql-check.sh                 syntax only: fails if Prometheus rejects a query
#   scripts/promql-check.sh --data          also fails on panels that return no series and on
#                                           alerts whose metrics have no series (run it after
#                                           an end-to-end crawl, with the services scraped)
#   scripts/promql-check.sh --data --k8s    count cAdvisor panels too (in a cluster)
#   options: --url URL (or PROMETHEUS_URL), --namespace REGEX (Grafana's $namespace; default .*)
#
# Prints one line per query that is rejected (ERROR) or empty (EMPTY), then a summary.
# Prometheus 2.42 (Debian 12) has no /api/v1/parse_query: /api/v1/query evaluates the
# expression and answers `bad_data` for a syntax error, which is the check.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$(bash "$ROOT/scripts/check-deploy.sh" python)
args=("$@")
if [[ -n ${PROMETHEUS_URL:-} && " $* " != *" --url "* ]]; then args+=(--url "$PROMETHEUS_URL"); fi
exec "$PYTHON" "$ROOT/scripts/deploy_checks.py" promql "$ROOT" "${args[@]}"
