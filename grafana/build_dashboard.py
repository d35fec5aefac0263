#!/usr/bin/env python3
"""Writes grafana/dashboards/relentless-overview.json, the overview dashboard.

The dashboard is generated so that its queries stay readable in one place and every
panel gets the same data source, legend and unit handling. Run it after an edit:

    python3 grafana/build_dashboard.py

`scripts/check-deploy.sh names` fails when the JSON is stale, and when a query names a
metric the binaries do not export (src/process/metrics.rs). Queries use only `job` and
`instance` labels from our targets, which exist both in Kubernetes (ServiceMonitor) and
in the local stack; the resource panels use cAdvisor's container_* metrics filtered by
the `namespace` variable, which exist only in Kubernetes.
"""

import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent / "dashboards" / "relentless-overview.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Rate window: Grafana's $__rate_interval adapts to the scrape interval and zoom.
RI = "$__rate_interval"
CONTAINERS = 'namespace=~"$namespace", container!="", container!="POD"'


def quantiles(metric, by="le"):
    return [
        (f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket[{RI}])))", f"p{int(q * 100)}")
        for q in (0.5, 0.9, 0.99)
    ]


# (row title, [(panel title, description, unit, [(expr, legend)], kind)])
ROWS = [
    ("Crawl", [
        ("Frontier lag per partition",
         "Jobs waiting in relentless.crawl.frontier, per partition (each partition counted once, from the worker that owns it).",
         "short",
         [("max by (partition) (relentless_worker_consumer_lag)", "partition {{partition}}")], "ts"),
        ("Throughput (jobs/s)",
         "Jobs received, succeeded, dead-lettered and skipped across all workers.",
         "ops",
         [(f"sum(rate(relentless_worker_jobs_received_total[{RI}]))", "received"),
          (f"sum(rate(relentless_worker_jobs_success_total[{RI}]))", "success"),
          (f"sum(rate(relentless_worker_jobs_failed_total[{RI}]))", "failed"),
          (f"sum(rate(relentless_worker_jobs_skipped_total[{RI}]))", "skipped")], "ts"),
        ("Fetch latency",
         "Open Library fetch time, rate-limit waits and retries included.",
         "s", quantiles("relentless_worker_fetch_latency_seconds"), "ts"),
        ("Jobs in flight",
         "Jobs running now per worker (CONCURRENT_JOBS is the ceiling).",
         "short",
         [("sum by (instance) (relentless_worker_in_flight)", "{{instance}}")], "ts"),
        ("Oldest job in flight",
         "A stuck partition shows here first (alert above PUBLISH_TIMEOUT).",
         "s",
         [("max by (instance) (relentless_worker_oldest_in_flight_seconds)", "{{instance}}")], "ts"),
        ("Oldest waiting delivery per partition",
         "How long the oldest message fetched but not yet started has waited for a slot, per partition: a partition starved of slots shows here while its running jobs look healthy.",
         "s",
         [("max by (partition) (relentless_worker_oldest_waiting_seconds)", "worker partition {{partition}}"),
          ("max by (partition) (relentless_graph_writer_oldest_waiting_seconds)", "graph-writer partition {{partition}}")], "ts"),
        ("Commit pending",
         "Completions waiting for a lower offset before they can be committed, per process.",
         "short",
         [("sum by (instance) (relentless_worker_commit_pending_total)", "worker {{instance}}"),
          ("sum by (instance) (relentless_graph_writer_commit_pending_total)", "graph-writer {{instance}}")], "ts"),
        ("Commit latency and errors",
         "Time of a successful offset commit (p99) and failed commits per second.",
         "s",
         [(f"histogram_quantile(0.99, sum by (le) (rate(relentless_worker_commit_latency_seconds_bucket[{RI}])))", "worker p99"),
          (f"sum(rate(relentless_worker_commit_errors_total[{RI}]))", "worker errors/s"),
          (f"sum(rate(relentless_worker_publish_timeouts_total[{RI}]))", "publish timeouts/s")], "ts"),
        ("Consumer last poll age",
         "Seconds since each consumer loop polled; /healthz fails at half of MAX_POLL_INTERVAL.",
         "s",
         [("max by (instance) (relentless_worker_last_poll_age_seconds)", "worker {{instance}}"),
          ("max by (instance) (relentless_graph_writer_last_poll_age_seconds)", "graph-writer {{instance}}")], "ts"),
    ]),
    ("Egress", [
        ("Egress load per proxy (requests/min)",
         "Requests per minute through each egress; the budget is EGRESS_RATE_PER_MINUTE (150).",
         "short",
         [(f"sum by (egress) (rate(relentless_worker_egress_requests_total[{RI}])) * 60", "{{egress}}")], "ts"),
        ("Responses by status",
         "Requests per second by HTTP status (`error`: no answer).",
         "reqps",
         [(f"sum by (status) (rate(relentless_worker_egress_requests_total[{RI}]))", "{{status}}")], "ts"),
        ("Rate-limit hits per proxy (per min)",
         "429 and 503 answers per minute, by egress.",
         "short",
         [(f"sum by (egress) (rate(relentless_worker_rate_limit_hits_total[{RI}])) * 60", "{{egress}}")], "ts"),
        ("Egress blocked",
         "1 while an egress is in backoff or marked down.",
         "short",
         [("max by (egress) (relentless_worker_egress_blocked)", "{{egress}}")], "ts"),
        ("DLQ by reason (jobs/s)",
         "Jobs dead-lettered into relentless.crawl.dlq, by reason; graph rows into relentless.graph.dlq.",
         "ops",
         [(f"sum by (reason) (rate(relentless_worker_jobs_failed_total[{RI}]))", "{{reason}}"),
          (f"sum(rate(relentless_graph_writer_results_failed_total[{RI}])) + sum(rate(relentless_graph_writer_edges_failed_total[{RI}]))", "graph rows")], "ts"),
    ]),
    ("Graph", [
        ("Graph writer rows/s",
         "Node and relationship rows committed in Neo4j, and messages received.",
         "ops",
         [(f"sum(rate(relentless_graph_writer_results_written_total[{RI}]))", "nodes written"),
          (f"sum(rate(relentless_graph_writer_edges_written_total[{RI}]))", "edges written"),
          (f"sum(rate(relentless_graph_writer_results_received_total[{RI}]))", "nodes received"),
          (f"sum(rate(relentless_graph_writer_edges_received_total[{RI}]))", "edges received")], "ts"),
        ("Neo4j batch latency",
         "Time of one batch transaction.",
         "s", quantiles("relentless_graph_writer_neo4j_write_seconds"), "ts"),
        ("Rows per batch",
         "Average rows per Neo4j transaction (GRAPH_BATCH_SIZE is the ceiling).",
         "short",
         [(f"sum(rate(relentless_graph_writer_batch_rows_sum[{RI}])) / sum(rate(relentless_graph_writer_batch_rows_count[{RI}]))", "rows/batch")], "ts"),
        ("Neo4j up",
         "1 while every graph writer reaches Neo4j.",
         "short",
         [("min(relentless_graph_writer_neo4j_up)", "neo4j up")], "stat"),
        ("Graph writer lag",
         "Results and edges not yet written, per topic.",
         "short",
         [("sum by (topic) (max by (topic, partition) (relentless_graph_writer_consumer_lag))", "{{topic}}")], "ts"),
        ("API requests",
         "API requests per second by route and status, and crawls created.",
         "reqps",
         [(f"sum by (route, status) (rate(relentless_api_requests_total[{RI}]))", "{{route}} {{status}}"),
          (f"sum(rate(relentless_api_crawls_created_total[{RI}]))", "crawls created")], "ts"),
        ("Targets up",
         "Scrape targets of each service that answer.",
         "short",
         [('sum by (job) (up{job=~"worker|graph-writer|api"})', "{{job}}")], "ts"),
    ]),
    ("Resources (Kubernetes, cAdvisor)", [
        ("Memory working set per pod",
         "Every container in the selected namespaces, Kafka and Neo4j included (compare with the limits in deploy/).",
         "bytes",
         [(f"sum by (namespace, pod) (container_memory_working_set_bytes{{{CONTAINERS}}})", "{{namespace}}/{{pod}}")], "ts"),
        ("CPU per pod",
         "CPU cores used by every container in the selected namespaces.",
         "short",
         [(f"sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{{CONTAINERS}}}[{RI}]))", "{{namespace}}/{{pod}}")], "ts"),
        ("CPU throttling per pod",
         "Share of CPU periods throttled by the limit: a throttled broker or Neo4j slows every consumer.",
         "percentunit",
         [(f"sum by (namespace, pod) (rate(container_cpu_cfs_throttled_periods_total{{{CONTAINERS}}}[{RI}])) / sum by (namespace, pod) (rate(container_cpu_cfs_periods_total{{{CONTAINERS}}}[{RI}]))", "{{namespace}}/{{pod}}")], "ts"),
        ("OOM events per pod (1h)",
         "Containers killed for memory in the last hour, from cAdvisor: a limit set too low.",
         "short",
         [(f"sum by (namespace, pod) (increase(container_oom_events_total{{{CONTAINERS}}}[1h]))", "{{namespace}}/{{pod}}")], "ts"),
    ]),
]


def panel(pid, title, desc, unit, targets, kind, x, y):
    refs = "ABCDEFGH"
    common = {
        "id": pid,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "targets": [
            {"refId": refs[i], "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "stat":
        common.update({
            "type": "stat",
            "fieldConfig": {"defaults": {"unit": unit, "mappings": [
                {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                              "1": {"text": "UP", "color": "green"}}}],
                "thresholds": {"mode": "absolute", "steps": [
                    {"color": "red", "value": None}, {"color": "green", "value": 1}]}},
                "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none"},
        })
    else:
        common.update({
            "type": "timeseries",
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        })
    return common


def dashboard():
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, spec in enumerate(row_panels):
            x = 0 if i % 2 == 0 else 12
            panels.append(panel(pid, *spec, x, y))
            pid += 1
            if i % 2 == 1 or i == len(row_panels) - 1:
                y += 8
    return {
        "uid": "relentless-overview",
        "title": "Relentless Bookworm: overview",
        "description": "Crawl, egress, graph and resources of a Relentless Bookworm deployment.",
        "tags": ["relentless-bookworm"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
             "definition": "label_values(container_memory_working_set_bytes, namespace)",
             "query": {"query": "label_values(container_memory_working_set_bytes, namespace)",
                       "refId": "namespaces"},
             # The crawler, Kafka and Neo4j all live in `relentless`; add the operators'
             # namespaces (strimzi, keda) to see them too.
             "current": {"selected": True, "text": ["relentless"], "value": ["relentless"]},
             "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
