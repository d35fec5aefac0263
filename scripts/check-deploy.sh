#!/usr/bin/env bash
# Checks everything under deploy/, grafana/, the Dockerfile and docker-compose.yml
# without a cluster or a container engine.
#
#   scripts/check-deploy.sh            all static checks (below); exit 0 only if all pass
#   scripts/check-deploy.sh tools      install the tools only, print where they are
#   scripts/check-deploy.sh manifests  kustomize build + kubeconform -strict, per overlay
#   scripts/check-deploy.sh rules      promtool check + test rules, PrometheusRule == alerts.yml
#   scripts/check-deploy.sh names      every metric a query names is exported by the binaries
#   scripts/check-deploy.sh image      the runtime image provides every library the binaries need
#   scripts/check-deploy.sh compose    docker compose config (skipped without the tool)
#
# Tools are installed idempotently under .stack/tools (git-ignored):
#   kustomize and kubeconform with `go install` (Go module proxy),
#   a Python venv with PyYAML and kubernetes-validate (PyPI), whose wheel ships the
#   upstream Kubernetes JSON schemas ("local-strict" flavour) for the built-in kinds,
#   promtool from Debian's `prometheus` package.
# The CRDs of KEDA, Strimzi, Prometheus Operator and Chaos Mesh are read from
# $CRD_DIR (default ../shared/crds, else /work/shared/crds) and converted to
# kubeconform schemas under .stack/tools/crd-schemas.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=$ROOT/.stack/tools
BIN=$TOOLS/bin
VENV=$TOOLS/venv
KUSTOMIZE_VERSION=v5.8.1
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Compose Specification's JSON schema ships in this Go module (schema/compose-spec.json).
COMPOSE_GO_VERSION=v2.16.2
# The Kubernetes version the manifests are validated against: the oldest one we
# support on kind and in production (schemas for 1.25 … 1.37 are in the wheel).
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.31.0}
OVERLAYS=(kind production)

say() { printf '[check-deploy] %s\n' "$*"; }
die() { printf '[check-deploy] FAIL: %s\n' "$*" >&2; exit 1; }

crd_dir() {
  local d
  for d in "${CRD_DIR:-}" "$ROOT/../shared/crds" /work/shared/crds; do
    [[ -n $d && -d $d ]] && { (cd "$d" && pwd); return 0; }
  done
  die "CRDs not found: set CRD_DIR (expected ../shared/crds next to the repo)"
}

# --------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------

go_tool() { # go_tool <binary> <module path>@<version>
  local name=$1 mod=$2 stamp=$BIN/.$1.version
  [[ -x $BIN/$name && -f $stamp && $(<"$stamp") == "$mod" ]] && return 0
  command -v go >/dev/null || die "go is needed to install $name"
  say "installing $mod"
  mkdir -p "$BIN"
  GOBIN=$BIN GOFLAGS=-mod=mod go install "$mod" >"$TOOLS/go-$name.log" 2>&1 ||
    { tail -n 20 "$TOOLS/go-$name.log" >&2; die "go install $mod failed"; }
  echo "$mod" > "$stamp"
}

python_venv() {
  local want="pyyaml jsonschema kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" stamp=$VENV/.requirements
  [[ -x $VENV/bin/python && -f $stamp && $(<"$stamp") == "$want" ]] && return 0
  say "creating $VENV ($want)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $want >"$TOOLS/pip.log" 2>&1 ||
    { tail -n 20 "$TOOLS/pip.log" >&2; die "pip install failed"; }
  echo "$want" > "$stamp"
}

ensure_promtool() {
  command -v promtool >/dev/null && return 0
  say "installing Debian package prometheus (for promtool)"
  local policy=/usr/sbin/policy-rc.d created=0
  # keep the packaged daemon from starting on :9090 (the local stack owns that port)
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created=1; fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
    >"$TOOLS/apt.log" 2>&1 || { ((created)) && rm -f "$policy"; tail -n 20 "$TOOLS/apt.log" >&2; die "apt-get failed"; }
  ((created)) && rm -f "$policy"
  return 0
}

ensure_tools() {
  local lock
  mkdir -p "$TOOLS"
  # Tests run this script in parallel: one installer at a time, the others wait and reuse.
  exec {lock}>"$TOOLS/.lock"
  flock "$lock"
  go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  go_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  python_venv
  ensure_promtool
  exec {lock}>&-
}

PY() { "$VENV/bin/python" "$@"; }

# The built-in kinds' schemas of $KUBERNETES_VERSION from kubernetes-validate's wheel, made
# self-contained in .stack/tools/k8s-schemas: the wheel's files refer to
# "/api/_definitions.json#/$defs/…", a base its own validator sets and kubeconform cannot
# resolve, so each file gets the definitions it uses (transitively) under "definitions".
k8s_schema_dir() {
  local out=$TOOLS/k8s-schemas dir=v$KUBERNETES_VERSION-local-strict
  if [[ ! -f $out/$dir/.done ]]; then
    rm -rf "${out:?}/$dir"; mkdir -p "$out/$dir"
    PY - "$out/$dir" "$dir" <<'PY' >&2 || die "no Kubernetes $KUBERNETES_VERSION schemas in kubernetes-validate"
import glob, json, os, re, sys, kubernetes_validate
out, name = sys.argv[1], sys.argv[2]
src = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema", name)
files = [f for f in glob.glob(os.path.join(src, "*.json")) if not f.endswith("_definitions.json")]
if not files:
    sys.exit(1)
defs = json.load(open(os.path.join(src, "_definitions.json")))["$defs"]
# References from a kind's file ("/api/_definitions.json#/$defs/X") and between the
# definitions themselves ("#/$defs/X").
REF = re.compile(r'"(?:/api/_definitions\.json)?#/\$defs/([^"]+)"')
def closure(text):
    seen, todo = set(), REF.findall(text)
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(REF.findall(json.dumps(defs[d])))
    return seen
for path in files:
    text = open(path).read()
    schema = json.loads(text)
    schema["definitions"] = {d: defs[d] for d in closure(text)}
    body = REF.sub(lambda m: '"#/definitions/' + m.group(1) + '"', json.dumps(schema))
    with open(os.path.join(out, os.path.basename(path)), "w") as f:
        f.write(body)
print(f"[check-deploy] {len(files)} Kubernetes {name} schemas -> {out}")
PY
    touch "$out/$dir/.done"
  fi
  echo "$out"
}

# --------------------------------------------------------------------------
# manifests: kustomize build + kubeconform -strict (built-ins and CRs)
# --------------------------------------------------------------------------

# Converts the operators' CRDs into JSON schemas kubeconform reads, one file per kind and
# version: {kind}_{version}.json, lower-cased (openapi2jsonschema's layout). Strict like
# kubectl: every object that lists its properties gets additionalProperties: false unless
# the CRD says x-kubernetes-preserve-unknown-fields, so a misspelt field is an error.
convert_crds() {
  local src out=$TOOLS/crd-schemas stamp
  src=$(crd_dir)
  stamp=$( (cat "$src"/*.yaml; sed -n '/^convert_crds()/,/^}/p' "$0") | sha256sum | cut -c1-16)
  [[ -f $out/.stamp && $(<"$out/.stamp") == "$stamp" ]] && { echo "$out"; return 0; }
  rm -rf "$out"; mkdir -p "$out"
  PY - "$src" "$out" <<'PY' >&2
import glob, json, os, sys, yaml

src, out = sys.argv[1], sys.argv[2]

def strict(node):
    if isinstance(node, dict):
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)
    return node

count = 0
for path in sorted(glob.glob(os.path.join(src, "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        kind = doc["spec"]["names"]["kind"].lower()
        for version in doc["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = strict(version["schema"]["openAPIV3Schema"])
            name = f"{kind}_{version['name'].lower()}.json"
            with open(os.path.join(out, name), "w") as f:
                json.dump(schema, f)
            count += 1
print(f"[check-deploy] {count} CRD schemas from {src} -> {out}")
PY
  echo "$stamp" > "$out/.stamp"
  echo "$out"
}

kubeconform_check() { # kubeconform_check <name> <file with manifests>
  local name=$1 file=$2 crds k8s summary
  crds=$(convert_crds)
  k8s=$(k8s_schema_dir)
  # Built-in kinds: the upstream schemas shipped in kubernetes-validate's wheel
  # ("local-strict": additionalProperties false, refs into _definitions.json beside them).
  summary=$("$BIN/kubeconform" -strict -summary -kubernetes-version "$KUBERNETES_VERSION" \
    -schema-location "$k8s/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$crds/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    "$file" 2>&1) || { echo "$summary" >&2; die "kubeconform rejected $name"; }
  # No -ignore-missing-schemas: a kind without a schema is an error, never a skip.
  [[ $summary =~ Skipped:\ 0 ]] || { echo "$summary" >&2; die "$name: objects were skipped"; }
  say "$name: ${summary##*Summary: }"
}

# The checker must reject what is wrong, not only accept what is right: a misspelt field in
# a built-in kind, in a Strimzi CR and in a KEDA CR must each fail under -strict.
selftest() {
  local bad=$TOOLS/selftest-bad.yaml out
  cat > "$bad" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: misspelt-probe}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - {name: x, image: "x", livenessprobe: {}}
---
apiVersion: kafka.strimzi.io/v1
kind: KafkaTopic
metadata: {name: misspelt-partitions}
spec: {partitons: 3}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: misspelt-max}
spec:
  scaleTargetRef: {name: w}
  triggers: [{type: kafka, metadata: {topic: t}}]
  maxReplicas: 3
YAML
  out=$(kubeconform_check "selftest" "$bad" 2>&1) && die "kubeconform accepted misspelt fields: validation is not strict"
  [[ $out == *"Invalid: 3"* ]] || { echo "$out" >&2; die "selftest: expected 3 invalid objects"; }
  say "selftest: misspelt fields in a Deployment, a KafkaTopic and a ScaledObject are rejected"
}

check_manifests() {
  selftest
  local overlay out=$TOOLS/rendered
  mkdir -p "$out"
  for overlay in "${OVERLAYS[@]}"; do
    "$BIN/kustomize" build "$ROOT/deploy/kubernetes/overlays/$overlay" > "$out/$overlay.yaml" ||
      die "kustomize build of overlay $overlay failed"
    kubeconform_check "overlay $overlay" "$out/$overlay.yaml"
    manifest_rules "$overlay" "$out/$overlay.yaml"
  done
  "$BIN/kustomize" build "$ROOT/deploy/kubernetes/chaos" > "$out/chaos.yaml" || die "kustomize build of chaos failed"
  kubeconform_check "chaos experiments" "$out/chaos.yaml"
}

# Design rules kubeconform cannot know: probes, limits, grace period vs DRAIN_TIMEOUT,
# KEDA max replicas vs partitions, Redis eviction policy, replication per overlay.
manifest_rules() { # manifest_rules <overlay> <rendered file>
  PY - "$1" "$2" <<'PY' || die "overlay $1 breaks a deployment rule (above)"
import re, sys, yaml
overlay, path = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
errors = []
def err(msg): errors.append(msg)
def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

config = by[("ConfigMap", "relentless-config")]["data"]
drain = seconds(config["DRAIN_TIMEOUT"])
for name, port in (("worker", 9101), ("graph-writer", 9102), ("api", 8080)):
    dep = by.get(("Deployment", name))
    if not dep:
        err(f"Deployment {name} missing"); continue
    pod = dep["spec"]["template"]["spec"]
    if pod.get("terminationGracePeriodSeconds", 30) <= drain:
        err(f"{name}: terminationGracePeriodSeconds must exceed DRAIN_TIMEOUT ({drain}s)")
    for c in pod["containers"]:
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(k, {}):
                    err(f"{name}: {k}.{r} not set")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            err(f"{name}: liveness must be /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            err(f"{name}: readiness must be /readyz")
        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
            err(f"{name}: needs readOnlyRootFilesystem and no privilege escalation")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        err(f"{name}: must run as non-root")
    if not any(d["kind"] == "PodDisruptionBudget" and d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == name for d in docs):
        err(f"{name}: no PodDisruptionBudget")
    if name != "api" and ("ServiceMonitor", name) not in by:
        err(f"{name}: no ServiceMonitor")

topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
want = {"relentless.crawl.frontier", "relentless.crawl.results", "relentless.graph.edges",
        "relentless.crawl.dlq", "relentless.graph.dlq"}
if set(topics) != want:
    err(f"KafkaTopics {sorted(topics)} != {sorted(want)}")
for so in (d for d in docs if d["kind"] == "ScaledObject"):
    trig = so["spec"]["triggers"][0]["metadata"]
    parts = topics[trig["topic"]]["spec"]["partitions"]
    if so["spec"]["maxReplicaCount"] > parts:
        err(f"ScaledObject {so['metadata']['name']}: maxReplicaCount > {parts} partitions")

pool = by[("KafkaNodePool", "dual")]["spec"]
kconf = by[("Kafka", "relentless")]["spec"]["kafka"]["config"]
expect = {"kind": (1, 1, 1), "production": (3, 3, 2)}[overlay]
got = (pool["replicas"], kconf["default.replication.factor"], kconf["min.insync.replicas"])
if got != expect:
    err(f"brokers/replication/min.insync {got} != {expect}")
if any(t["spec"]["replicas"] != expect[1] for t in topics.values()):
    err(f"every KafkaTopic needs replicas {expect[1]}")

redis = by[("StatefulSet", "redis")]["spec"]["template"]["spec"]["containers"][0]["args"]
if "noeviction" not in redis or "--appendonly" not in redis:
    err("redis must run with AOF and maxmemory-policy noeviction")
squids = by[("StatefulSet", "squid")]["spec"]["replicas"]
pool_list = config["PROXY_POOL"].split(",")
if pool_list != [f"http://squid-{i}.squid:3128" for i in range(squids)]:
    err(f"PROXY_POOL {pool_list} does not match {squids} squid pods")
neo = by[("StatefulSet", "neo4j")]["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e.get("value") for e in neo["env"]}
def size(text):
    m = re.fullmatch(r"(\d+)([kmg]|Mi|Gi)", text)
    return int(m.group(1)) * {"k": 2**10, "m": 2**20, "g": 2**30, "Mi": 2**20, "Gi": 2**30}[m.group(2)]
used = sum(size(env[k]) for k in ("NEO4J_server_memory_heap_max__size", "NEO4J_server_memory_pagecache_size", "NEO4J_db_memory_transaction_total_max"))
if used + 256 * 2**20 > size(neo["resources"]["limits"]["memory"]):
    err("neo4j: heap + page cache + transactions (+256Mi native) exceed the memory limit")
if "secretKeyRef" not in str(neo["env"]):
    err("neo4j: credentials must come from a Secret")
for e in errors:
    print(f"[check-deploy] {overlay}: {e}", file=sys.stderr)
if not errors:
    print(f"[check-deploy] overlay {overlay}: deployment rules hold ({len(docs)} objects)")
sys.exit(1 if errors else 0)
PY
}

# --------------------------------------------------------------------------
# rules: promtool + PrometheusRule in sync with deploy/prometheus/alerts.yml
# --------------------------------------------------------------------------

RULES=$ROOT/deploy/prometheus/alerts.yml
PROMRULE=$ROOT/deploy/kubernetes/base/prometheusrule.yaml

sync_rules() {
  PY - "$RULES" "$PROMRULE" <<'PY'
import sys, yaml
rules, out = sys.argv[1], sys.argv[2]
spec = yaml.safe_load(open(rules))
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "relentless-bookworm", "labels": {"release": "kube-prometheus-stack"}},
    "spec": spec,
}
class Literal(str): pass
def literal(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)
yaml.add_representer(str, literal)
with open(out, "w") as f:
    f.write("# GENERATED from deploy/prometheus/alerts.yml by `scripts/check-deploy.sh sync-rules`:\n"
            "# edit that file, then regenerate. The `release` label is what kube-prometheus-stack's\n"
            "# Prometheus selects rules by (its default ruleSelector).\n")
    yaml.dump(doc, f, sort_keys=False, width=100)
print(f"[check-deploy] wrote {out}")
PY
}

check_rules() {
  promtool check rules "$RULES" || die "promtool rejected $RULES"
  promtool test rules "$ROOT/deploy/prometheus/alerts_test.yml" \
    || die "an alert of $RULES does not behave as deploy/prometheus/alerts_test.yml says"
  PY - "$RULES" "$PROMRULE" <<'PY' || die "$PROMRULE is stale: run scripts/check-deploy.sh sync-rules"
import sys, yaml
plain = yaml.safe_load(open(sys.argv[1]))
operator = yaml.safe_load(open(sys.argv[2]))
sys.exit(0 if operator["spec"] == plain else 1)
PY
  say "rules: promtool accepts $RULES; the PrometheusRule carries the same groups"
}

# --------------------------------------------------------------------------
# names: every metric a query names is exported (src/process/metrics.rs); dashboard fresh
# --------------------------------------------------------------------------

check_names() {
  local dash=$ROOT/grafana/dashboards/relentless-overview.json
  PY - "$ROOT/grafana" "$dash" <<'PY' || die "$dash is stale: run python3 grafana/build_dashboard.py"
import sys
sys.path.insert(0, sys.argv[1])
import build_dashboard
sys.exit(0 if open(sys.argv[2]).read() == build_dashboard.render() else 1)
PY
  PY "$ROOT/scripts/deploy_checks.py" names "$ROOT" || die "a query names a metric the binaries do not export"
}

# --------------------------------------------------------------------------
# image: the runtime stage provides every shared library the binaries need
# --------------------------------------------------------------------------

bin_dir() {
  local d
  for d in "${BOOKWORM_BIN_DIR:-}" "$ROOT/target/release" "$ROOT/target/debug"; do
    [[ -n $d && -x $d/worker && -x $d/graph-writer && -x $d/bookworm ]] && { echo "$d"; return 0; }
  done
  return 1
}

check_image() {
  local dockerfile=$ROOT/Dockerfile dir pkgs copied bin lib path pkg missing=0
  pkgs=$(sed -n 's/^# check-deploy: runtime-packages //p' "$dockerfile")
  copied=$(sed -n 's/^# check-deploy: copied-libs //p' "$dockerfile")
  [[ -n $pkgs ]] || die "Dockerfile: no '# check-deploy: runtime-packages' line"
  grep -q '^FROM gcr.io/distroless/cc-debian12:nonroot' "$dockerfile" || die "Dockerfile: runtime stage is not distroless/cc-debian12:nonroot"
  for lib in $copied; do
    grep -Eq "^[^#]*cp .*${lib//./\\.}" "$dockerfile" || die "Dockerfile declares $lib copied but no RUN copies it"
  done
  if ! dir=$(bin_dir); then
    [[ ${REQUIRE_BINARIES:-0} == 1 ]] && die "no built binaries (cargo build --bins)"
    say "image: SKIPPED the library check: no built binaries under target/ (cargo build --bins)"
    return 0
  fi
  # 1. ldd: every library each binary loads comes from a package of the runtime image
  #    (distroless/cc-debian12) or is copied in by the Dockerfile.
  for bin in worker graph-writer bookworm; do
    while read -r lib path; do
      [[ $lib == linux-vdso* ]] && continue
      if [[ " $copied " == *" $lib "* ]]; then continue; fi
      pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -n1 | cut -d: -f1) || pkg=
      [[ -z $pkg ]] && pkg=$(dpkg -S "$path" 2>/dev/null | head -n1 | cut -d: -f1) || true
      if [[ " $pkgs " != *" $pkg "* ]]; then
        echo "  $bin needs $lib ($path, package '${pkg:-unknown}'): not in the runtime image" >&2
        missing=1
      fi
    done < <(ldd "$dir/$bin" | awk '/=>/ {print $1, $3; next} /ld-linux/ {print $1, $1}')
  done
  ((missing == 0)) || die "the runtime image lacks libraries (above): add them to the Dockerfile"
  say "image: ldd of $dir/{worker,graph-writer,bookworm}: every library is in [$pkgs] or copied [$copied]"
  run_in_rootfs "$dir" "$pkgs" "$copied"
}

# 2. Run the binaries in a root file system made the way the runtime stage is: the Debian
#    12 packages distroless/cc is built from, plus the libraries the Dockerfile copies, as
#    uid 65532 with nothing else. Needs root (chroot) and Debian's archive (apt-get
#    download); skipped with a message otherwise.
run_in_rootfs() {
  local dir=$1 pkgs=$2 copied=$3 debs=$TOOLS/debs root=$TOOLS/rootfs deb lib bin out
  if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    say "image: rootfs run SKIPPED (needs root and apt-get)"; return 0
  fi
  mkdir -p "$debs"
  # shellcheck disable=SC2086
  if ! (cd "$debs" && ls ./*.deb >/dev/null 2>&1 && [[ $(<.pkgs) == "$pkgs zlib1g" ]]) 2>/dev/null; then
    rm -f "$debs"/*.deb
    # A fresh machine may have no package lists yet: refresh them once and retry.
    (cd "$debs" && { apt-get download $pkgs zlib1g || { apt-get update -qq && apt-get download $pkgs zlib1g; }; } \
      >"$TOOLS/apt-download.log" 2>&1) ||
      { say "image: rootfs run SKIPPED (apt-get download failed, see $TOOLS/apt-download.log)"; return 0; }
    echo "$pkgs zlib1g" > "$debs/.pkgs"
  fi
  rm -rf "$root"; mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/zlib"
  for deb in "$debs"/*.deb; do
    if [[ $(basename "$deb") == zlib1g_* ]]; then dpkg-deb -x "$deb" "$root/zlib"; else dpkg-deb -x "$deb" "$root"; fi
  done
  # Debian 12 is merged-/usr: /lib and /lib64 are links into /usr (as in distroless).
  for lib in lib lib64; do [[ -e $root/$lib ]] || ln -s "usr/$lib" "$root/$lib"; done
  for lib in $copied; do
    find "$root/zlib" -name "$lib*" -exec cp -P {} "$root/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/" \;
  done
  rm -rf "$root/zlib"
  for bin in worker graph-writer bookworm; do
    cp "$dir/$bin" "$root/usr/local/bin/$bin"
    out=$(chroot --userspec=65532:65532 "$root" "/usr/local/bin/$bin" --help 2>&1) ||
      { echo "$out" | head -n 5 >&2; die "$bin does not start in the runtime root file system"; }
  done
  rm -rf "$root"
  say "image: worker, graph-writer and bookworm start (--help) as uid 65532 in a rootfs of [$pkgs] + [$copied]"
}

# --------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------

# The compose-spec.json of compose-go (the library docker compose itself validates with).
compose_schema() {
  local dir
  dir=$(cd "$TOOLS" && GOFLAGS=-mod=mod go mod download -json "github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION" |
    PY -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || return 1
  [[ -f $dir/schema/compose-spec.json ]] && echo "$dir/schema/compose-spec.json"
}

check_compose() {
  local file=$ROOT/docker-compose.yml
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$file" config -q || die "docker compose config rejected $file"
    say "compose: docker compose config accepts $file"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f "$file" config -q || die "docker-compose config rejected $file"
    say "compose: docker-compose config accepts $file"
  else
    say "compose: 'docker compose config' SKIPPED (no compose tool here); validating against the Compose Specification schema instead"
  fi
  local schema
  schema=$(compose_schema) || die "could not fetch the Compose Specification schema (go mod download)"
  PY "$ROOT/scripts/deploy_checks.py" compose "$ROOT" "$schema" || die "$file is invalid (above)"
  # The compose Prometheus' config, with the rules path it mounts pointed at the repo's file.
  local tmp=$TOOLS/prometheus-compose
  mkdir -p "$tmp"
  cp "$RULES" "$tmp/alerts.yml"
  sed "s#/etc/prometheus/alerts.yml#$tmp/alerts.yml#" "$ROOT/deploy/prometheus/prometheus.yml" > "$tmp/prometheus.yml"
  promtool check config "$tmp/prometheus.yml" >/dev/null || die "promtool rejected deploy/prometheus/prometheus.yml"
  say "compose: promtool accepts deploy/prometheus/prometheus.yml with the alerts it mounts"
}

# --------------------------------------------------------------------------

main() {
  case ${1:-all} in
    tools) ensure_tools; echo "$BIN"; echo "$VENV"; k8s_schema_dir ;;
    python) ensure_tools >&2; echo "$VENV/bin/python" ;;
    manifests) ensure_tools; check_manifests ;;
    rules) ensure_tools; check_rules ;;
    sync-rules) ensure_tools; sync_rules ;;
    names) ensure_tools; check_names ;;
    image) ensure_tools; check_image ;;
    compose) ensure_tools; check_compose ;;
    all)
      ensure_tools
      check_manifests
      check_rules
      check_names
      check_image
      check_compose
      say "all deploy checks passed"
      ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
