#!/usr/bin/env bash
# The physical-limit reference for `bookworm import` (issue 19): the same dump loaded offline
# by Neo4j's own bulk importer, `neo4j-admin database import full`, run from the Neo4j jars
# scripts/stack.sh fetched from Maven (.stack/lib/neo4j; only read) into a fresh Neo4j home
# of its own. It never talks to the stack's Neo4j, opens no port, and removes what it made.
#
#   scripts/neo4j-bulk-reference.sh DUMP_FILE        # e.g. an ol_dump_<date>.txt.gz
#
# 1. scripts/dump-to-csv.py turns the dump into the import CSVs of the graph bookworm import
#    builds (labels, keys, properties, relationships, stubs; see its header);
# 2. neo4j-admin's importer writes a new store from them (timed alone: "tool wall");
# 3. unless CONSTRAINTS=0, the store is opened embedded (no Bolt, no HTTP) and migrations
#    0001 and 0002 are applied, as the graph writer applies them at start-up (the bulk
#    importer of Community's record format cannot build them itself: `--schema` is refused),
#    timed until the indexes are online; then the graph's counts are read back as a check.
#
# Prints nodes, relationships, rows, conversion time, tool wall time, rows/s of the tool
# alone, the store size (du -sb of the database directory), and the same with the
# constraints. Settings (env): HEAP (importer JVM heap, 2g), OFF_HEAP (the importer's
# --max-off-heap-memory, 4g), PAGECACHE (server.memory.pagecache.size, 2g), THREADS (the
# importer's --threads, default: the processors Java sees), CONSTRAINTS (1), KEEP (1 keeps
# the temp dir and prints its path), TMPDIR (where the temp dir goes). Needs java 17,
# python3, gzip, sort, comm. It is a measurement: run it alone on the machine if you can.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dump=${1:?usage: $0 DUMP_FILE}
[[ -r $dump ]] || { echo "cannot read $dump" >&2; exit 2; }
dump=$(cd "$(dirname "$dump")" && pwd)/$(basename "$dump")
lib=${NEO4J_LIB:-$root/.stack/lib/neo4j}
ls "$lib"/neo4j-import-tool-*.jar > /dev/null 2>&1 \
  || { echo "no neo4j-import-tool jar in $lib (scripts/stack.sh fetches it)" >&2; exit 2; }
JAVA=${JAVA:-java}
heap=${HEAP:-2g}
off_heap=${OFF_HEAP:-4g}
pagecache=${PAGECACHE:-2g}

work=$(mktemp -d "${TMPDIR:-/tmp}/neo4j-bulk-reference.XXXXXX")
cleanup() {
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
csv=$work/csv
home=$work/home
mkdir -p "$csv" "$home/conf" "$home/logs"
# The JVM flags Neo4j's own scripts pass on Java 17.
jvm=(-XX:+UseG1GC -XX:-OmitStackTraceInFastThrow -Djava.awt.headless=true
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED
  -Dio.netty.tryReflectionSetAccessible=true)
cat > "$home/conf/neo4j.conf" <<EOF
server.memory.pagecache.size=$pagecache
server.memory.heap.max_size=$heap
server.directories.logs=$home/logs
server.bolt.enabled=false
server.http.enabled=false
server.https.enabled=false
dbms.usage_report.enabled=false
EOF
export NEO4J_HOME=$home NEO4J_CONF=$home/conf

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

echo "dump: $dump ($(du -b "$dump" | cut -f1) bytes)"
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2 " GiB RAM, " $7 " GiB available"}'), load $(cut -d' ' -f1-3 /proc/loadavg)"

t0=$(now)
python3 "$here/dump-to-csv.py" "$dump" "$csv" > "$work/summary.json"
t1=$(now)
convert_s=$(secs "$t0" "$t1")
field() { python3 -c "import json,sys; d=json.load(open('$work/summary.json')); print(eval(sys.argv[1]))" "$1"; }
echo "conversion: $convert_s s, $(field 'd["csv_bytes"]') CSV bytes" \
  "($(field 'd["nodes"]["Work"]') works, $(field 'd["nodes"]["Author"]') authors," \
  "$(field 'd["nodes"]["Edition"]') editions, $(field 'd["nodes"]["Subject"]') subjects," \
  "$(field 'd["nodes"]["stub"]') stubs $(field 'd["stubs_by_label"]');" \
  "$(field 'd["redirects"]') redirects and $(field 'd["deletes"]') deletes skipped," \
  "$(field 'sum(d["skipped"].values())') lines the importer would dead-letter)"

mapfile -t import_args < "$csv/import.args"
threads=()
[[ -n ${THREADS:-} ]] && threads=(--threads="$THREADS")
timed=()
[[ -x /usr/bin/time ]] && timed=(/usr/bin/time -f "%U %S %M" -o "$work/import.time")
load_before=$(cut -d' ' -f1 /proc/loadavg)
t2=$(now)
if ! "${timed[@]}" "$JAVA" -Xms"$heap" -Xmx"$heap" "${jvm[@]}" -cp "$lib/*" org.neo4j.cli.AdminTool \
  database import full neo4j --array-delimiter=U+001F --max-off-heap-memory="$off_heap" \
  --report-file="$work/import.report" "${threads[@]}" "${import_args[@]}" \
  > "$work/import.log" 2>&1; then
  tail -40 "$work/import.log" >&2
  echo "neo4j-admin import failed (log above)" >&2
  exit 1
fi
t3=$(now)
tool_s=$(secs "$t2" "$t3")
db=$home/data/databases/neo4j
store=$(du -sb "$db" | cut -f1)
txlog=$(du -sb "$home/data/transactions/neo4j" | cut -f1)
imported_nodes=$(awk '/^  [0-9]+ nodes$/ {print $1}' "$work/import.log")
imported_rels=$(awk '/^  [0-9]+ relationships$/ {print $1}' "$work/import.log")
nodes=$(field 'd["nodes_total"]')
rels=$(field 'd["relationships_total"]')
[[ $imported_nodes == "$nodes" && $imported_rels == "$rels" ]] \
  || { echo "the importer reports $imported_nodes nodes, $imported_rels relationships; the CSVs hold $nodes, $rels" >&2; exit 1; }
rows=$((nodes + rels))
grep -E "^IMPORT DONE|Peak memory|Max worker threads|Configured max memory|Max heap" "$work/import.log" | sed 's/^ */importer: /'
echo "nodes: $nodes"
echo "relationships: $rels"
echo "rows: $rows (bookworm import's own count, without the stubs: $(field 'd["bookworm_rows"]'))"
# The importer's own figure ("IMPORT DONE in 1m 2s 345ms"): without JVM start-up and exit.
done_s=$(grep -m1 '^IMPORT DONE in' "$work/import.log" | python3 -c "
import re, sys
t = sys.stdin.read()
u = {'h': 3600, 'm': 60, 's': 1, 'ms': 0.001}
print(round(sum(int(n) * u[x] for n, x in re.findall(r'(\d+)(ms|h|m|s)\b', t)), 1))")
echo "tool wall: $tool_s s (JVM start to exit; the importer's own 'IMPORT DONE' figure: $done_s s)"
if [[ -s $work/import.time ]]; then
  read -r user_s sys_s rss_kb < "$work/import.time"
  echo "tool CPU: $(python3 -c "print(f'{$user_s + $sys_s:.1f}')") s (user $user_s + sys $sys_s)," \
    "peak RSS $((rss_kb / 1024)) MiB; load average $load_before before, $(cut -d' ' -f1 /proc/loadavg) after"
fi
echo "rows/s, tool alone: $(python3 -c "print(round($rows / $tool_s))") (by IMPORT DONE: $(python3 -c "print(round($rows / $done_s))"))"
echo "store bytes: $store (du -sb $db; transaction logs another $txlog)"

if [[ ${CONSTRAINTS:-1} == 1 ]]; then
  # Migrations 0001 and 0002 as the graph writer applies them, on the imported store opened
  # embedded; then the counts, read back.
  mkdir -p "$work/java"
  cat > "$work/java/Constraints.java" <<'JAVA'
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.graphdb.Transaction;
import org.neo4j.io.ByteUnit;

public final class Constraints {
    public static void main(String[] args) throws Exception {
        long pageCache = ByteUnit.parse(args[1]);
        long t0 = System.nanoTime();
        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(Path.of(args[0]))
                .setConfig(GraphDatabaseSettings.pagecache_memory, pageCache)
                .setConfig(BoltConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .build();
        try {
            GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
            db.executeTransactionally("RETURN 1");
            long t1 = System.nanoTime();
            for (int i = 2; i < args.length; i++) {
                StringBuilder text = new StringBuilder();
                for (String line : Files.readAllLines(Path.of(args[i]))) {
                    if (!line.trim().startsWith("//")) text.append(line).append('\n');
                }
                for (String statement : text.toString().split(";")) {
                    if (!statement.isBlank()) db.executeTransactionally(statement);
                }
            }
            try (Transaction tx = db.beginTx()) {
                tx.schema().awaitIndexesOnline(6, TimeUnit.HOURS);
            }
            long t2 = System.nanoTime();
            String counts = db.executeTransactionally(
                    "MATCH (n) WITH count(n) AS nodes "
                    + "MATCH ()-[r]->() WITH nodes, count(r) AS rels "
                    + "MATCH (s {stub: true}) RETURN nodes, rels, count(s) AS stubs",
                    java.util.Map.of(), r -> r.next().toString());
            String indexes = db.executeTransactionally(
                    "SHOW CONSTRAINTS YIELD name RETURN collect(name) AS names",
                    java.util.Map.of(), r -> r.next().get("names").toString());
            System.out.printf("open_s=%.1f%n", (t1 - t0) / 1e9);
            System.out.printf("constraints_s=%.1f%n", (t2 - t1) / 1e9);
            System.out.println("counts=" + counts);
            System.out.println("constraints=" + indexes);
        } finally {
            dbms.shutdown();
        }
    }
}
JAVA
  t4=$(now)
  if ! "$JAVA" -Xms"$heap" -Xmx"$heap" "${jvm[@]}" -cp "$lib/*" "$work/java/Constraints.java" \
    "$home" "$pagecache" "$root"/migrations/*.cypher > "$work/constraints.log" 2>&1; then
    tail -40 "$work/constraints.log" >&2
    echo "building the constraints failed (log above)" >&2
    exit 1
  fi
  t5=$(now)
  constraints_s=$(awk -F= '/^constraints_s=/ {print $2}' "$work/constraints.log")
  store2=$(du -sb "$db" | cut -f1)
  echo "constraints: $(awk -F= '/^constraints=/ {print $2}' "$work/constraints.log") built in $constraints_s s" \
    "(store opened in $(awk -F= '/^open_s=/ {print $2}' "$work/constraints.log") s; JVM $(secs "$t4" "$t5") s in all)"
  echo "read back: $(awk -F= '/^counts=/ {sub(/^counts=/, ""); print}' "$work/constraints.log")"
  echo "tool + constraints: $(python3 -c "print(f'{$tool_s + $constraints_s:.1f}')") s," \
    "$(python3 -c "print(round($rows / ($tool_s + $constraints_s)))") rows/s"
  echo "store bytes with the constraints: $store2"
fi
