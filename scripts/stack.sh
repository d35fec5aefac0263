#!/usr/bin/env bash
# Local service stack for development, tests and CI: no Docker, no systemd.
#
#   scripts/stack.sh up            install what is missing, start all, wait until ready
#   scripts/stack.sh down          stop what this script started (by pid file)
#   scripts/stack.sh status        up/down per service (exit 0 only if all up)
#   scripts/stack.sh env           export lines for the services
#   scripts/stack.sh start <svc>   start one service and wait until ready
#   scripts/stack.sh stop <svc>    stop one service (data kept)
#
# svc: kafka neo4j bolt-tls redis squid-0 squid-1 squid-2 prometheus
#
# Kafka, Redis and Neo4j also listen with TLS, with certificates of a local CA the
# script makes once (.stack/tls): Kafka SASL_SSL (SCRAM-SHA-512) on :9094, Redis
# on :6380, Neo4j's Bolt on its own port (TLS optional: one connector) and TLS only on
# :7688 (bolt-tls, socat in front of it). `up`
# restarts a running service that an older version of this script started
# without them. STACK_DIR (default .stack) and STACK_PORT_OFFSET (default 0,
# added to every port) run a second, separate stack beside the first; NEO4J_PAGECACHE
# (default 512m) sizes Neo4j's page cache.
#
# Everything downloaded or written lives under $ROOT/.stack (git-ignored):
#   lib/  jars (Kafka, Neo4j, the compiled Neo4j launcher)
#   conf/ generated configs       data/<svc>  state, kept across restarts
#   logs/<svc>.log                run/<svc>.pid  pid of the process we started
# All services listen on loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPTS=$ROOT/scripts
STACK=${STACK_DIR:-$ROOT/.stack}
OFFSET=${STACK_PORT_OFFSET:-0}
LIB=$STACK/lib
CONF=$STACK/conf
DATA=$STACK/data
LOGS=$STACK/logs
RUN=$STACK/run
# Squid drops root for the "proxy" user, which may not be able to traverse the
# checkout (a clone under /root, say): its writable state lives in a folder of
# its own under /var/tmp, one per checkout, linked from .stack/logs.
SQUID_STATE=/var/tmp/bookworm-squid-$(printf %s "${STACK_DIR:-$ROOT}" | md5sum | cut -c1-8)
TLS=$STACK/tls
# The SASL/SCRAM user of Kafka's TLS listener.
KAFKA_SCRAM_USER=${KAFKA_SCRAM_USER:-bookworm}
KAFKA_SCRAM_PASSWORD=${KAFKA_SCRAM_PASSWORD:-bookworm-scram-local}
# What a running service must have been started with: `up` restarts one whose
# marker (.stack/run/<svc>.gen, written at launch) differs. Bump when a
# service's listeners change.
GENERATION=tls-1

NEO4J_PASSWORD=${NEO4J_PASSWORD:-bookworm-local}
JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
JAVA=$JAVA_HOME/bin/java
JAVAC=$JAVA_HOME/bin/javac
[[ -x $JAVA ]] || JAVA=java
[[ -x $JAVAC ]] || JAVAC=javac

SERVICES=(kafka neo4j bolt-tls redis squid-0 squid-1 squid-2 prometheus)
# Startup deadlines (seconds). JVM services get more: first start creates stores.
START_TIMEOUT=${STACK_START_TIMEOUT:-180}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-60}

say() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

port_of() {
  local base
  case $1 in
    kafka) base=9092 ;; neo4j) base=7687 ;; redis) base=6379 ;;
    squid-0) base=3128 ;; squid-1) base=3129 ;; squid-2) base=3130 ;;
    prometheus) base=9090 ;;
    # the TLS listeners and Kafka's KRaft controller
    kafka-controller) base=9093 ;; kafka-tls) base=9094 ;; redis-tls) base=6380 ;;
    bolt-tls) base=7688 ;;
    *) die "unknown service: $1" ;;
  esac
  echo $((base + OFFSET))
}

# every port a service binds (kafka: broker, KRaft controller, SASL_SSL; redis: plain, TLS)
ports_of() {
  case $1 in
    kafka) echo "$(port_of kafka) $(port_of kafka-controller) $(port_of kafka-tls)" ;;
    redis) echo "$(port_of redis) $(port_of redis-tls)" ;;
    *) port_of "$1" ;;
  esac
}

# check_ports_free <svc>: die if a process we did not start holds one of its ports.
check_ports_free() {
  local p
  for p in $(ports_of "$1"); do
    ! port_open "$p" || die "$1: 127.0.0.1:$p is taken by a process this script did not start"
  done
}

port_open() { timeout 2 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Prints the pid of <svc> if it is running and was started by us. "Ours" is
# decided by the process's working directory (we start every service inside
# .stack/data/<svc>): survives pid reuse, and works for redis, which rewrites
# its command line.
our_pid() {
  local f=$RUN/$1.pid pid cwd
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$STACK"/* || $cwd == "$SQUID_STATE"/* ]] || return 1
  echo "$pid"
}

# launch <svc> <cmd...>: start in the background in its own session (so it
# survives the calling shell and gets no terminal signals), cwd .stack/data/<svc>,
# stdout+stderr appended to .stack/logs/<svc>.log, pid in .stack/run/<svc>.pid.
launch() {
  local svc=$1; shift
  local log=$LOGS/$svc.log
  mkdir -p "$DATA/$svc"
  touch "$log"
  # Readiness checks only look at what this start appends to the log.
  stat -L -c %s "$log" > "$RUN/$svc.logoff"
  printf '===== %s stack.sh starting %s\n' "$(date -Is)" "$svc" >> "$log"
  # `exec setsid` keeps $! == the service's pid: a background subshell is not a
  # process-group leader, so setsid(1) calls setsid() and execs without forking.
  ( cd "$DATA/$svc" && exec setsid nohup "$@" >>"$log" 2>&1 </dev/null ) &
  echo $! > "$RUN/$svc.pid"
  echo "$GENERATION" > "$RUN/$svc.gen"
}

# stale <svc>: true if our running instance was started by an older version of
# this script (before its TLS listeners): `up` restarts it.
stale() {
  case $1 in kafka | neo4j | redis) ;; *) return 1 ;; esac
  [[ $(cat "$RUN/$1.gen" 2>/dev/null) != "$GENERATION" ]]
}

new_log() { tail -c +"$(( $(cat "$RUN/$1.logoff" 2>/dev/null || echo 0) + 1 ))" "$LOGS/$1.log" 2>/dev/null; }

# show_failure <svc> <why>: what went wrong, from this start's part of the log.
show_failure() {
  local svc=$1 why=$2
  {
    say "$svc $why; log: $LOGS/$svc.log"
    say "first errors:"
    new_log "$svc" | grep -m 5 -E 'ERROR|FATAL|Caused by|Exception' || true
    say "last lines:"
    new_log "$svc" | tail -n 30 || true
  } >&2
}

# wait_ready <svc>: poll the service's readiness check until the deadline.
wait_ready() {
  local svc=$1 deadline=$((SECONDS + START_TIMEOUT)) pid
  while :; do
    if ! pid=$(our_pid "$svc"); then
      show_failure "$svc" "exited during startup"
      return 1
    fi
    if "ready_${svc%-*}" "$svc" "$pid"; then
      say "$svc ready on 127.0.0.1:$(port_of "$svc") (pid $pid, log $LOGS/$svc.log)"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      show_failure "$svc" "not ready after ${START_TIMEOUT}s"
      return 1
    fi
    sleep 0.5 # poll interval, not a fixed wait
  done
}

# --------------------------------------------------------------------------
# installation (only what is missing)
# --------------------------------------------------------------------------

ensure_packages() {
  local pkgs=()
  command -v curl >/dev/null || pkgs+=(curl)
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs+=(redis-server redis-tools)
  command -v squid >/dev/null || [[ -x /usr/sbin/squid ]] || pkgs+=(squid)
  command -v prometheus >/dev/null || pkgs+=(prometheus)
  # openssl makes the TLS listeners' certificates; libssl-dev and pkg-config are the
  # build's (rdkafka's TLS and SASL/SCRAM link OpenSSL), here because demo.sh and test.sh
  # both bring the stack up before they build.
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v socat >/dev/null || pkgs+=(socat)
  [[ -f /usr/include/openssl/ssl.h ]] || pkgs+=(libssl-dev)
  command -v pkg-config >/dev/null || pkgs+=(pkg-config)
  ((${#pkgs[@]})) || return 0

  say "installing Debian packages: ${pkgs[*]}"
  # Debian's maintainer scripts start the packaged daemons (squid :3128,
  # redis :6379, prometheus :9090) right after install, which would take our
  # ports. A policy-rc.d that exits 101 tells invoke-rc.d/deb-systemd-invoke
  # "not allowed"; it is removed again if we created it.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, written by stack.sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created=1
  fi
  local rc=0
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  } >"$LOGS/apt.log" 2>&1 || rc=$?
  ((created)) && rm -f "$policy"
  if ((rc)); then tail -n 30 "$LOGS/apt.log" >&2; die "apt-get failed (log $LOGS/apt.log)"; fi
  export PATH=$PATH:/usr/sbin:/sbin
}

# mvn_libs <name>: copy the dependencies of scripts/<name>/pom.xml into
# .stack/lib/<name>; skipped while the pom is unchanged since the last copy.
mvn_libs() {
  local name=$1 pom=$SCRIPTS/$1/pom.xml out=$LIB/$1 sum
  sum=$(sha256sum "$pom" | cut -d' ' -f1)
  [[ -f $out/.pom.sha256 && $(<"$out/.pom.sha256") == "$sum" ]] && return 0
  say "fetching $name jars from Maven Central into $out"
  rm -rf "$out"
  mkdir -p "$out"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$out" -DincludeScope=runtime >"$LOGS/mvn-$name.log" 2>&1 ||
    { tail -n 30 "$LOGS/mvn-$name.log" >&2; die "maven failed (log $LOGS/mvn-$name.log)"; }
  echo "$sum" > "$out/.pom.sha256"
}

ensure_neo4j_launcher() {
  local src=$SCRIPTS/neo4j/Launcher.java out=$LIB/neo4j-launcher
  if [[ -f $out/Launcher.class && $out/Launcher.class -nt $src && $out/Launcher.class -nt $LIB/neo4j/.pom.sha256 ]]; then
    return 0
  fi
  say "compiling the Neo4j launcher"
  rm -rf "$out"
  mkdir -p "$out"
  "$JAVAC" -nowarn -d "$out" -cp "$LIB/neo4j/*" "$src" || die "javac failed for $src"
}

# ensure_certs: a CA and one server certificate (localhost, 127.0.0.1) for the
# TLS listeners, made once with openssl and kept in .stack/tls; plus a second CA
# that signed nothing here, for tests of a client that trusts the wrong CA.
ensure_certs() {
  [[ -s $TLS/server.pem && -s $TLS/wrong-ca.pem && -s $TLS/neo4j/public.crt ]] && return 0
  command -v openssl >/dev/null || die "openssl is needed for the TLS listeners"
  say "making the stack's CA and server certificate in $TLS"
  rm -rf "$TLS.tmp"
  mkdir -p "$TLS.tmp/neo4j/trusted" "$TLS.tmp/neo4j/revoked"
  (
    cd "$TLS.tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bookworm stack CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.pem
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bookworm wrong CA" \
      -addext basicConstraints=critical,CA:TRUE -keyout wrong-ca.key -out wrong-ca.pem
    # PKCS#8 ("BEGIN PRIVATE KEY"): what Kafka's PEM keystore and Neo4j read.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server.key
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
    printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment \
      extendedKeyUsage=serverAuth subjectAltName=DNS:localhost,IP:127.0.0.1 > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem
    cat server.key server.pem > kafka.pem
    cp server.key neo4j/private.key
    cp server.pem neo4j/public.crt
    cp ca.pem neo4j/trusted/ca.pem
    chmod 644 ./*.pem ./*.key neo4j/*.key
  ) >"$LOGS/tls.log" 2>&1 || { tail -n 20 "$LOGS/tls.log" >&2; die "openssl failed (log $LOGS/tls.log)"; }
  rm -rf "$TLS"
  mv "$TLS.tmp" "$TLS"
}

needs() {
  case $1 in
    kafka) mvn_libs kafka; ensure_certs ;;
    neo4j) mvn_libs neo4j; ensure_neo4j_launcher; ensure_certs ;;
    redis | bolt-tls) ensure_certs ;;
  esac
}

# --------------------------------------------------------------------------
# kafka: KRaft combined broker+controller, from the Maven Central jars
# --------------------------------------------------------------------------

launch_kafka() {
  local conf=$CONF/kafka data=$DATA/kafka
  mkdir -p "$conf" "$data"
  cat > "$conf/server.properties" <<EOF
# generated by scripts/stack.sh
# single node running both roles (no ZooKeeper in Kafka 4)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$(port_of kafka-controller)
listeners=PLAINTEXT://127.0.0.1:$(port_of kafka),CONTROLLER://127.0.0.1:$(port_of kafka-controller),SASL_SSL://127.0.0.1:$(port_of kafka-tls)
advertised.listeners=PLAINTEXT://127.0.0.1:$(port_of kafka),SASL_SSL://127.0.0.1:$(port_of kafka-tls)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
# the TLS listener: SASL/SCRAM-SHA-512 users (made after start, see
# ready_kafka), the stack CA's certificate for 127.0.0.1 and localhost
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/kafka.pem
ssl.client.auth=none
log.dirs=$data/log
# topics are created explicitly by the code/tests, never by a typo
auto.create.topics.enable=false
num.partitions=1
# one broker: internal topics cannot have more than one replica
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# consumers in tests join a group at once instead of after 3 s
group.initial.rebalance.delay.ms=0
EOF
  cat > "$conf/log4j2.properties" <<'EOF'
# generated by scripts/stack.sh: stdout goes to .stack/logs/kafka.log.
# Root at WARN keeps the client/config dumps out; kafka.* at INFO keeps the
# startup/shutdown milestones ("Kafka Server started") readiness looks for.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
EOF
  # Format the storage once; the cluster id is kept with the data.
  if [[ ! -f $data/log/meta.properties ]]; then
    [[ -s $data/cluster.id ]] ||
      "$JAVA" -cp "$LIB/kafka/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 > "$data/cluster.id"
    say "formatting Kafka storage (cluster id $(<"$data/cluster.id"))"
    "$JAVA" -Dlog4j2.configurationFile="$conf/log4j2.properties" -cp "$LIB/kafka/*" kafka.tools.StorageTool \
      format -t "$(<"$data/cluster.id")" -c "$conf/server.properties" >>"$LOGS/kafka.log" 2>&1 ||
      { tail -n 20 "$LOGS/kafka.log" >&2; die "kafka storage format failed"; }
  fi
  launch kafka "$JAVA" -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$conf/log4j2.properties" \
    -cp "$LIB/kafka/*" kafka.Kafka "$conf/server.properties"
}

# Ready = ports open, the broker logged "Kafka Server started" in this run, a
# real metadata round trip (TopicCommand --list) succeeds, and the SCRAM user of
# the TLS listener exists (set through the plaintext listener; idempotent).
ready_kafka() {
  port_open "$(port_of kafka)" && port_open "$(port_of kafka-tls)" || return 1
  new_log kafka | grep -q 'Kafka Server started' || return 1
  timeout 60 "$JAVA" -Xmx256m -cp "$LIB/kafka/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$(port_of kafka)" --list >/dev/null 2>&1 || return 1
  timeout 60 "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" \
    -cp "$LIB/kafka/*" kafka.admin.ConfigCommand \
    --bootstrap-server "127.0.0.1:$(port_of kafka)" --alter --entity-type users \
    --entity-name "$KAFKA_SCRAM_USER" \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$KAFKA_SCRAM_PASSWORD]" >/dev/null 2>&1
}

# --------------------------------------------------------------------------
# neo4j: embedded Community 5.26 + Bolt via scripts/neo4j/Launcher.java
# --------------------------------------------------------------------------

launch_neo4j() {
  mkdir -p "$DATA/neo4j/home"
  # --add-opens/netty flag: what Neo4j's own start script passes on Java 17,
  # otherwise the page cache and netty fall back to slower paths with warnings.
  launch neo4j env NEO4J_PASSWORD="$NEO4J_PASSWORD" NEO4J_PAGECACHE="${NEO4J_PAGECACHE:-512m}" \
    NEO4J_BOLT_HOST=127.0.0.1 NEO4J_BOLT_PORT="$(port_of neo4j)" NEO4J_TLS_DIR="$TLS/neo4j" \
    "$JAVA" -Xms1g -Xmx2g -XX:+UseG1GC -XX:-OmitStackTraceInFastThrow \
    -Djdk.nio.maxCachedBufferSize=1024 -Dio.netty.tryReflectionSetAccessible=true \
    --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED \
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED \
    -cp "$LIB/neo4j/*:$LIB/neo4j-launcher" Launcher "$DATA/neo4j/home"
}

# Ready = the launcher said READY (printed only after the password is set) and
# Bolt accepts connections.
ready_neo4j() {
  new_log neo4j | grep -q "NEO4J READY pid=$2" && port_open "$(port_of neo4j)"
}

# --------------------------------------------------------------------------
# redis (Debian package), own config
# --------------------------------------------------------------------------

launch_redis() {
  mkdir -p "$CONF/redis" "$DATA/redis"
  cat > "$CONF/redis/redis.conf" <<EOF
# generated by scripts/stack.sh
bind 127.0.0.1
port $(port_of redis)
# TLS beside the plaintext port; clients are not asked for certificates
tls-port $(port_of redis-tls)
tls-cert-file $TLS/server.pem
tls-key-file $TLS/server.key
tls-ca-cert-file $TLS/ca.pem
tls-auth-clients no
# we background it ourselves and keep the pid file
daemonize no
supervised no
# log to stdout = .stack/logs/redis.log
logfile ""
dir $DATA/redis
# durability across stop/start: AOF, no RDB snapshots
appendonly yes
appendfsync everysec
save ""
EOF
  launch redis redis-server "$CONF/redis/redis.conf"
}

ready_redis() {
  [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$(port_of redis)" ping 2>/dev/null) == PONG ]] &&
    [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$(port_of redis-tls)" --tls --cacert "$TLS/ca.pem" ping 2>/dev/null) == PONG ]]
}

# --------------------------------------------------------------------------
# squid-N (Debian package): three forward proxies, each with its own source IP
# --------------------------------------------------------------------------

squid_bin() { command -v squid || echo /usr/sbin/squid; }

launch_squid() {
  local svc=$1 n=${1#squid-} port conf data logs
  port=$(port_of "$svc")
  conf=$CONF/$svc/squid.conf
  data=$SQUID_STATE/$svc
  logs=$SQUID_STATE/logs
  mkdir -p "$CONF/$svc" "$data" "$logs"
  touch "$logs/$svc.log" "$logs/$svc-access.log"
  ln -sf "$logs/$svc.log" "$LOGS/$svc.log"
  ln -sf "$logs/$svc-access.log" "$LOGS/$svc-access.log"
  chown -R proxy:proxy "$SQUID_STATE"
  runuser -u proxy -- test -w "$data" ||
    die "user proxy cannot write $data"
  cat > "$conf" <<EOF
# generated by scripts/stack.sh
http_port 127.0.0.1:$port
visible_hostname $svc.stack.local
cache_effective_user proxy
cache_effective_group proxy

acl stack_clients src 127.0.0.0/8 ::1
acl stack_loopback dst 127.0.0.0/8
acl SSL_ports port 443
acl CONNECT method CONNECT
# No Safe_ports list on purpose: plain HTTP to any port (the tests' simulator
# listens on random high ports); tunnels (CONNECT) only to 443 for live crawls.
http_access deny CONNECT !SSL_ports
http_access allow stack_clients
http_access deny all

# Each proxy connects out from its own address so the simulator can tell the
# proxies apart by client IP. Only for loopback destinations: a 127.x source
# cannot reach a real host, so live crawls keep the default source address.
tcp_outgoing_address 127.0.0.1$((n + 1)) stack_loopback

# a pass-through proxy: no cache, no disk, no identifying headers
cache deny all
cache_mem 8 MB
via off
forwarded_for delete
netdb_filename none

pid_filename $data/squid.pid
access_log stdio:$logs/$svc-access.log squid
cache_log $logs/$svc.log
cache_store_log none
logfile_rotate 0
coredump_dir $data
# stop within a second instead of waiting 30 s for clients to finish
shutdown_lifetime 1 seconds
EOF
  "$(squid_bin)" -k parse -f "$conf" >/dev/null 2>"$RUN/$svc.parse" ||
    { cat "$RUN/$svc.parse" >&2; die "$svc: bad squid config $conf"; }
  # -N: no daemon, a single process, so the pid we record is the one to stop.
  launch "$svc" "$(squid_bin)" -N -f "$conf"
}

# Ready = port open and squid's own control channel answers (-k check signals
# the pid in its pid_filename).
ready_squid() {
  port_open "$(port_of "$1")" && "$(squid_bin)" -k check -f "$CONF/$1/squid.conf" >/dev/null 2>&1
}

# --------------------------------------------------------------------------
# bolt-tls: a TLS-only Bolt port in front of Neo4j (socat, Debian package). The
# embedded Neo4j has one Bolt connector, with TLS optional because every other
# suite speaks plaintext to it; this port refuses anything but TLS, as
# production's Neo4j (server.bolt.tls_level=REQUIRED) does.
# --------------------------------------------------------------------------

launch_bolt-tls() {
  launch bolt-tls socat \
    "OPENSSL-LISTEN:$(port_of bolt-tls),bind=127.0.0.1,reuseaddr,fork,cert=$TLS/server.pem,key=$TLS/server.key,verify=0" \
    "TCP:127.0.0.1:$(port_of neo4j)"
}

ready_bolt() { port_open "$(port_of bolt-tls)"; }

# --------------------------------------------------------------------------
# prometheus (Debian package)
# --------------------------------------------------------------------------

launch_prometheus() {
  mkdir -p "$CONF/prometheus" "$DATA/prometheus" "$STACK/prometheus/targets"
  cat > "$CONF/prometheus/prometheus.yml" <<EOF
# generated by scripts/stack.sh
global:
  scrape_interval: 5s        # short, so tests see fresh samples quickly
  evaluation_interval: 5s
scrape_configs:
  - job_name: worker
    static_configs: [{targets: ['127.0.0.1:9101']}]
  - job_name: graph-writer
    static_configs: [{targets: ['127.0.0.1:9102']}]
  - job_name: api
    static_configs: [{targets: ['127.0.0.1:8080']}]
  # tests register extra targets by dropping JSON files here
  # ([{"targets": ["127.0.0.1:PORT"], "labels": {...}}]); re-read every 5 s
  - job_name: bookworm
    file_sd_configs:
      - files: ['$STACK/prometheus/targets/*.json']
        refresh_interval: 5s
EOF
  # --web.enable-lifecycle: tests may POST /-/reload after editing the config
  launch prometheus prometheus \
    --config.file="$CONF/prometheus/prometheus.yml" \
    --storage.tsdb.path="$DATA/prometheus" \
    --storage.tsdb.retention.time=7d \
    --web.listen-address="127.0.0.1:$(port_of prometheus)" \
    --web.enable-lifecycle
}

ready_prometheus() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$(port_of prometheus)/-/ready"; }

# --------------------------------------------------------------------------
# start / stop / status
# --------------------------------------------------------------------------

# running <svc>: true (and says so) if our instance is already running.
running() {
  local pid
  pid=$(our_pid "$1") || return 1
  say "$1 already running (pid $pid)"
}

# begin <svc>: launch (not running yet); refuses if a foreign process holds a port.
begin() {
  local svc=$1
  rm -f "$RUN/$svc.pid"
  check_ports_free "$svc"
  needs "$svc"
  case $svc in
    squid-*) launch_squid "$svc" ;;
    *) "launch_$svc" ;;
  esac
}

# stop_svc <svc> [pid]: SIGTERM our process, wait for it to exit (SIGKILL
# after STOP_TIMEOUT), remove the pid file. With a pid: already signalled, only wait.
stop_svc() {
  local svc=$1 pid=${2:-} deadline t0=$SECONDS
  if [[ -z $pid ]]; then
    if ! pid=$(our_pid "$svc"); then
      rm -f "$RUN/$svc.pid"
      say "$svc not running"
      return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
  fi
  deadline=$((SECONDS + STOP_TIMEOUT))
  while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.2; done
  if [[ -d /proc/$pid ]]; then
    say "$svc (pid $pid) did not stop in ${STOP_TIMEOUT}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
    while [[ -d /proc/$pid ]]; do sleep 0.1; done
  fi
  rm -f "$RUN/$svc.pid"
  say "$svc stopped (pid $pid, $((SECONDS - t0))s)"
}

check_svc() {
  case " ${SERVICES[*]} " in *" $1 "*) ;; *) die "unknown service '$1' (one of: ${SERVICES[*]})" ;; esac
}

prepare() {
  mkdir -p "$LIB" "$CONF" "$DATA" "$LOGS" "$RUN"
  ensure_packages
  export PATH=$PATH:/usr/sbin:/sbin
}

cmd_up() {
  prepare
  local svc started=() failed=0
  # Check ports and fetch jars first, so neither a foreign process on one of
  # our ports nor a download failure leaves half a stack starting.
  for svc in "${SERVICES[@]}"; do
    if our_pid "$svc" >/dev/null; then
      stale "$svc" || continue
      needs "$svc"
      say "$svc was started without its TLS listener: restarting it"
      stop_svc "$svc"
    fi
    check_ports_free "$svc"
    needs "$svc"
  done
  # Launch everything, then wait: the JVMs start in parallel.
  for svc in "${SERVICES[@]}"; do
    running "$svc" && continue
    begin "$svc"
    started+=("$svc")
  done
  for svc in "${started[@]}"; do wait_ready "$svc" || failed=1; done
  ((failed == 0)) || die "some services failed to start (logs in $LOGS)"
  say "all services up; logs in $LOGS/<svc>.log"
}

cmd_down() {
  local svc pid
  local -A pids=()
  # Send TERM to all first so the JVM shutdowns (Neo4j ~4 s, Kafka ~2 s) overlap.
  for svc in "${SERVICES[@]}"; do
    if pid=$(our_pid "$svc"); then
      pids[$svc]=$pid
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for svc in "${SERVICES[@]}"; do
    if [[ -n ${pids[$svc]:-} ]]; then stop_svc "$svc" "${pids[$svc]}"; else stop_svc "$svc"; fi
  done
}

cmd_status() {
  local svc pid all=0
  for svc in "${SERVICES[@]}"; do
    if pid=$(our_pid "$svc") && port_open "$(port_of "$svc")"; then
      printf '%-11s up    pid %-7s 127.0.0.1:%-5s log %s\n' "$svc" "$pid" "$(port_of "$svc")" "$LOGS/$svc.log"
    else
      printf '%-11s down\n' "$svc"
      all=1
    fi
  done
  return $all
}

cmd_env() {
  cat <<EOF
export KAFKA_BROKERS=127.0.0.1:$(port_of kafka)
export NEO4J_URI=bolt://127.0.0.1:$(port_of neo4j)
export NEO4J_USER=neo4j
export NEO4J_PASSWORD=$NEO4J_PASSWORD
export REDIS_URL=redis://127.0.0.1:$(port_of redis)
export PROXY_POOL=http://127.0.0.1:$(port_of squid-0),http://127.0.0.1:$(port_of squid-1),http://127.0.0.1:$(port_of squid-2)
export STACK_CA_FILE=$TLS/ca.pem
export STACK_WRONG_CA_FILE=$TLS/wrong-ca.pem
export KAFKA_TLS_BOOTSTRAP=127.0.0.1:$(port_of kafka-tls)
export KAFKA_SCRAM_USER=$KAFKA_SCRAM_USER
export KAFKA_SCRAM_PASSWORD=$KAFKA_SCRAM_PASSWORD
export REDIS_TLS_URL=rediss://127.0.0.1:$(port_of redis-tls)
export NEO4J_TLS_URI=bolt+s://127.0.0.1:$(port_of neo4j)
export NEO4J_TLS_ONLY_URI=bolt+s://127.0.0.1:$(port_of bolt-tls)
EOF
}

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    start)
      [[ $# -eq 2 ]] || usage
      check_svc "$2"
      prepare
      running "$2" || { begin "$2"; wait_ready "$2"; }
      ;;
    stop)
      [[ $# -eq 2 ]] || usage
      check_svc "$2"
      stop_svc "$2"
      ;;
    *) usage ;;
  esac
}

main "$@"
