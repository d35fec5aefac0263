#!/usr/bin/env python3
"""Checks of the queries and files under grafana/ and deploy/, run by scripts/check-deploy.sh
and scripts/promql-check.sh (needs PyYAML; those scripts run it in their venv).

    deploy_checks.py names   ROOT   every metric a query names is one the binaries export
    deploy_checks.py compose ROOT [SCHEMA]
                                    docker-compose.yml is valid against the Compose Specification
                                    schema (when given), refers to files that exist, and has the
                                    services the laptop stack needs
    deploy_checks.py promql  ROOT [--data] [--k8s] [--url URL] [--namespace RE]
                                    evaluate every query against a real Prometheus

`promql` without --data fails only on queries Prometheus rejects (syntax, types); with
--data it also fails on dashboard queries that return no series and on alert rules whose
metrics have no series (an alert's own expression is empty while it is not firing, so its
metrics are what must exist). Queries on cAdvisor (container_*) exist only in Kubernetes:
reported and not counted unless --k8s.
"""

import json
import pathlib
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import yaml

DASHBOARD = "grafana/dashboards/relentless-overview.json"
RULES = "deploy/prometheus/alerts.yml"
# The consumer loop's metrics are registered once per service under these namespaces
# (ConsumerMetrics::register(registry, namespace) in src/process/metrics.rs).
CONSUMER_NAMESPACES = ("relentless_worker", "relentless_graph_writer")
# Metrics from outside the binaries that queries may use: Prometheus' own `up` and cAdvisor's
# container metrics (kubelet), which exist only in Kubernetes.
EXTERNAL = {"up"}
K8S_ONLY = re.compile(r"^container_[a-z_]+$")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2"}


def queries(root):
    """(where, title, expr, kind) for every dashboard target and every alert rule."""
    out = []
    dash = json.loads((root / DASHBOARD).read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append(("dashboard", panel["title"], target["expr"], "panel"))
    for group in yaml.safe_load((root / RULES).read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append(("rules", name, rule["expr"], "rule"))
    return out


def exported(root):
    """Metric names the binaries export, read from src/process/metrics.rs."""
    text = (root / "src/process/metrics.rs").read_text()
    names = set(re.findall(r'"(relentless_[a-z0-9_]+)"', text))
    for suffix in re.findall(r'&name\("([a-z0-9_]+)"\)', text):
        names.update(f"{ns}_{suffix}" for ns in CONSUMER_NAMESPACES)
    # Histograms: the name itself is never a series; its _bucket/_sum/_count are.
    hist = set()
    for block in re.findall(r"histogram\(\s*registry,\s*([^,]+),", text):
        literal = re.search(r'"(relentless_[a-z0-9_]+)"', block)
        suffix = re.search(r'&name\("([a-z0-9_]+)"\)', block)
        if literal:
            hist.add(literal.group(1))
        if suffix:
            hist.update(f"{ns}_{suffix.group(1)}" for ns in CONSUMER_NAMESPACES)
    series = (names - hist) | {f"{h}_{s}" for h in hist for s in ("bucket", "sum", "count")}
    return series


def metric_names(expr):
    """Metric names an expression selects (strings, matchers, ranges and grouping removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names


def check_names(root):
    known = exported(root)
    bad = []
    for where, title, expr, _ in queries(root):
        for name in sorted(metric_names(expr)):
            if name in known or name in EXTERNAL or K8S_ONLY.match(name):
                continue
            bad.append(f"{where}: '{title}' uses {name}, which the binaries do not export")
    for line in bad:
        print(f"[check-deploy] {line}", file=sys.stderr)
    if not bad:
        n = len(queries(root))
        print(f"[check-deploy] names: all {n} queries use only exported metrics "
              f"({len(known)} series names from src/process/metrics.rs) or up/cAdvisor")
    return 1 if bad else 0


def check_compose(root, schema_path=None):
    doc = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = doc.get("services", {})
    errors = []
    if schema_path:
        import jsonschema
        schema = json.loads(pathlib.Path(schema_path).read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            errors.append(f"schema: at {'/'.join(map(str, e.path)) or '/'}: {e.message}")
    need = {"kafka", "neo4j", "redis", "prometheus", "grafana", "worker", "graph-writer", "api"}
    missing = need - set(services)
    if missing:
        errors.append(f"services missing: {sorted(missing)}")
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith("./") and not (root / source).exists():
                errors.append(f"{name}: mounts {source}, which does not exist")
        for dep in (svc.get("depends_on") or {}):
            if dep not in services:
                errors.append(f"{name}: depends on unknown service {dep}")
    for name in ("worker", "graph-writer"):
        env = services.get(name, {}).get("environment", {})
        if "KAFKA_BROKERS" not in env:
            errors.append(f"{name}: KAFKA_BROKERS not set")
    for e in errors:
        print(f"[check-deploy] compose: {e}", file=sys.stderr)
    if not errors:
        how = "valid against the Compose Specification schema, " if schema_path else ""
        print(f"[check-deploy] compose: {how}{len(services)} services, mounted files exist")
    return 1 if errors else 0


def prom_query(url, expr):
    """(status, series count or error text) of an instant query."""
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(f"{url}/api/v1/query", data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        body = json.loads(e.read() or b"{}")
    if body.get("status") != "success":
        return "error", f"{body.get('errorType')}: {body.get('error')}"
    result = body["data"]["result"]
    return "ok", len(result) if isinstance(result, list) else 1


def substitute(expr, namespace):
    """Grafana's variables, replaced as Grafana would for a 1h view."""
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            .replace("$namespace", namespace))


def check_promql(root, args):
    data = "--data" in args
    k8s = "--k8s" in args
    url = "http://127.0.0.1:9090"
    namespace = ".*"
    if "--url" in args:
        url = args[args.index("--url") + 1]
    if "--namespace" in args:
        namespace = args[args.index("--namespace") + 1]
    try:
        urllib.request.urlopen(f"{url}/-/ready", timeout=10).read()
    except OSError as e:
        print(f"[promql] Prometheus at {url} is not reachable: {e}", file=sys.stderr)
        return 1
    failed, empty, k8s_only, ok = [], [], [], 0
    for where, title, expr, kind in queries(root):
        e = substitute(expr, namespace)
        label = f"{where}: {title}"
        status, detail = prom_query(url, e)
        if status == "error":
            failed.append(f"{label}: {detail}\n    {' '.join(e.split())}")
            continue
        if not data:
            ok += 1
            continue
        names = metric_names(e)
        if any(K8S_ONLY.match(n) for n in names) and not k8s:
            k8s_only.append(label)
            continue
        if kind == "panel":
            if detail == 0:
                empty.append(f"{label}: no series\n    {' '.join(e.split())}")
            else:
                ok += 1
        else:
            lacking = [n for n in sorted(names) if prom_query(url, f'count({{__name__="{n}"}})')[1] == 0]
            if lacking:
                empty.append(f"{label}: no series for {', '.join(lacking)}")
            else:
                ok += 1
    mode = "must return data" if data else "syntax only"
    for line in failed:
        print(f"[promql] ERROR {line}")
    for line in empty:
        print(f"[promql] EMPTY {line}")
    for line in k8s_only:
        print(f"[promql] SKIP (cAdvisor, Kubernetes only; --k8s to count) {line}")
    print(f"[promql] {mode} against {url}: {ok} ok, {len(failed)} rejected, "
          f"{len(empty)} without data, {len(k8s_only)} Kubernetes-only skipped")
    return 1 if failed or empty else 0


def main(argv):
    if len(argv) < 3 or argv[1] not in ("names", "compose", "promql"):
        print(__doc__, file=sys.stderr)
        return 2
    root = pathlib.Path(argv[2]).resolve()
    if argv[1] == "names":
        return check_names(root)
    if argv[1] == "compose":
        return check_compose(root, argv[3] if len(argv) > 3 else None)
    return check_promql(root, argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
