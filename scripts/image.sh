#!/usr/bin/env bash
# The container image, built with podman on a machine without Docker or registry access.
#
#   scripts/image.sh [build]   build the image from host-built binaries, print its size
#   scripts/image.sh base      only the base image (cached by its recipe)
#   scripts/image.sh env       export lines that point podman at this script's configuration
#
# The Dockerfile's two-stage build (rust:1-bookworm, then distroless) is the path for a
# machine with a registry. This is the other one: `cargo build` runs on the host, a base
# image is made from Debian's packages with mmdebstrap (libc, libgcc, zlib, CA
# certificates, a non-root user, and nothing else: no shell, no package manager), and
# Containerfile.runtime copies the binaries onto it.
#
# Environment:
#   IMAGE            tag to build (default relentless-bookworm:dev, the name docker-compose.yml
#                    and the kind overlay use)
#   PROFILE          cargo profile of the binaries (default release)
#   BOOKWORM_BIN_DIR take worker, graph-writer and bookworm from here instead of running
#                    cargo (the image test passes the binaries cargo test built)
#   IMAGE_SOURCE     org.opencontainers.image.source (default: the git remote, else Cargo.toml's repository)
#   REBUILD_BASE=1   make the base again even if one with the same recipe exists (security
#                    updates of the Debian packages)
#
# podman runs with runc, cgroupfs and the vfs storage driver: the configuration this script
# writes under .stack/podman/ and hands to podman through CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF (`eval "$(scripts/image.sh env)"` for your own podman commands).
# System files under /etc/containers are never touched.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF=$ROOT/scripts/image.sh
STATE=$ROOT/.stack/podman
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
IMAGE=${IMAGE:-relentless-bookworm:dev}
PROFILE=${PROFILE:-release}
SUITE=bookworm
# What the binaries load (ldd: libc.so.6, libm.so.6, libgcc_s.so.1, libz.so.1, and
# libssl.so.3/libcrypto.so.3 for Kafka's TLS and SASL/SCRAM) plus the CA bundle for TLS to
# openlibrary.org. Their dependencies (debconf, openssl, gcc-12-base) are downloaded by apt
# and then removed file by file.
BASE_PACKAGES=(libc6 libgcc-s1 zlib1g libssl3 ca-certificates)
BASE_NAME=relentless-bookworm-base
NONROOT_UID=65532

# Scratch space of this run (the base's root file system, the build context), removed at exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bookworm-image.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
scratch() { mkdir -p "$WORK/$1" && echo "$WORK/$1"; }

say() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# podman: installed from Debian, configured by files this script owns
# --------------------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  # podman wants newuidmap and an OCI hook directory even when run as root.
  command -v newuidmap >/dev/null || missing+=(uidmap)
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]})"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_config() {
  mkdir -p "$STATE"
  # crun (podman's default) fails on these machines: the cgroups are in hybrid mode and
  # setting rlimits is refused. runc with cgroupfs and no default ulimits runs.
  cat > "$STATE/containers.conf.$$" <<'EOF'
# Written by scripts/image.sh: podman on a machine without systemd or a usable crun.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
  # vfs: no overlay mounts (which need kernel support or fuse-overlayfs); slower, always works.
  cat > "$STATE/storage.conf.$$" <<EOF
# Written by scripts/image.sh.
[storage]
driver = "vfs"
runroot = "$(storage_path runroot)"
graphroot = "$(storage_path graphroot)"
EOF
  # Renamed into place: other runs (parallel tests) may be reading or writing them too.
  mv "$STATE/containers.conf.$$" "$STATE/containers.conf"
  mv "$STATE/storage.conf.$$" "$STATE/storage.conf"
  export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf
}

# podman's own default locations, so `podman images` elsewhere sees the same store.
storage_path() {
  if [[ $(id -u) == 0 ]]; then
    case $1 in runroot) echo /run/containers/storage ;; graphroot) echo /var/lib/containers/storage ;; esac
  else
    case $1 in
      runroot) echo "${XDG_RUNTIME_DIR:-/tmp/podman-run-$(id -u)}/containers" ;;
      graphroot) echo "${XDG_DATA_HOME:-$HOME/.local/share}/containers/storage" ;;
    esac
  fi
}

cmd_env() {
  write_config
  printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF"
  printf 'export CONTAINERS_STORAGE_CONF=%q\n' "$CONTAINERS_STORAGE_CONF"
}

# --------------------------------------------------------------------------
# base: a root file system of Debian packages, nothing that can run a command
# --------------------------------------------------------------------------

# The base's tag: a hash of its recipe (this function and the package list), so a change
# to either makes a new base and an unchanged one is reused.
base_tag() {
  { declare -f build_base prune_rootfs; echo "${BASE_PACKAGES[*]} $SUITE $NONROOT_UID"; } |
    sha256sum | cut -c1-12
}

build_base() {
  local base=$1 work rootfs sources
  work=$(scratch base)
  rootfs=$work/rootfs
  # The host's apt sources (its mirror and signing keys); deb.debian.org where it has none.
  sources=/etc/apt/sources.list.d/debian.sources
  [[ -f $sources ]] || sources=/etc/apt/sources.list
  [[ -f $sources ]] || sources=http://deb.debian.org/debian
  say "mmdebstrap: ${BASE_PACKAGES[*]} from $SUITE"
  # extract: the packages' files, no maintainer scripts, so no dpkg or shell is needed
  # inside. Merged /usr as in Debian 12 (and distroless): /lib, /bin... link into /usr.
  # The debs are kept (--skip=cleanup/apt/cache) so prune_rootfs can remove, file by file,
  # every package that only came in as a dependency.
  mmdebstrap --quiet --variant=extract --skip=cleanup/apt/cache \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    --setup-hook='for d in bin sbin lib lib64; do mkdir -p "$1/usr/$d"; ln -s "usr/$d" "$1/$d"; done' \
    "$SUITE" "$rootfs" "$sources" </dev/null
  prune_rootfs "$rootfs"
  tar -C "$rootfs" --numeric-owner --sort=name -cf "$work/rootfs.tar" .
  podman import --quiet \
    --change "USER $NONROOT_UID:$NONROOT_UID" \
    --change 'ENV PATH=/usr/local/bin' \
    --change 'WORKDIR /' \
    --message "mmdebstrap $SUITE: ${BASE_PACKAGES[*]}" \
    "$work/rootfs.tar" "$base" >/dev/null
}

prune_rootfs() {
  local root=$1 deb pkg keep path bundle
  keep=" ${BASE_PACKAGES[*]} "
  # 1. Packages apt brought in as dependencies (their maintainer scripts would have needed
  #    them; nothing does at run time): remove the files they shipped.
  for deb in "$root"/var/cache/apt/archives/*.deb; do
    pkg=$(dpkg-deb --field "$deb" Package)
    [[ $keep == *" $pkg "* ]] && continue
    while read -r path; do
      path=${path#./}
      [[ -n $path && ( -f $root/$path || -L $root/$path ) ]] && rm -f "${root:?}/$path"
    done < <(dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -v '/$')
  done
  # 2. The CA bundle update-ca-certificates would have written (it is a shell script).
  bundle=$root/etc/ssl/certs/ca-certificates.crt
  mkdir -p "$root/etc/ssl/certs"
  find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat > "$bundle"
  grep -q 'BEGIN CERTIFICATE' "$bundle" || die "empty CA bundle"
  # 3. No package manager, no shell, no executables but ours: apt's and dpkg's state and
  #    configuration, every bin/sbin directory, documentation and locale data, glibc's
  #    iconv modules (Rust never calls iconv), /dev (the runtime mounts its own).
  rm -rf "${root:?}"/{etc/apt,etc/dpkg,etc/debconf.conf,etc/ca-certificates,etc/ca-certificates.conf} \
    "$root"/var/{lib/apt,lib/dpkg,cache,log} \
    "$root"/{bin,sbin,usr/bin,usr/sbin,usr/games,usr/libexec} \
    "$root"/usr/share/{doc,man,info,lintian,locale,ca-certificates,bug,debconf,perl5,pixmaps} \
    "$root"/usr/lib/x86_64-linux-gnu/{gconv,perl-base,engines-3,ossl-modules} "$root"/usr/lib/ssl \
    "$root"/usr/lib/*/gconv "$root"/dev/* "$root"/etc/{fstab,hostname,resolv.conf,ld.so.conf.d}
  find "$root" -depth -type d -empty ! -path "$root/tmp" ! -path "$root/dev" -delete
  # 4. Users and name resolution as in distroless: root, and nonroot (65532) who owns a home.
  mkdir -p "$root"/{etc,tmp,dev,proc,sys,home/nonroot,usr/local/bin}
  chmod 1777 "$root/tmp"
  chown "$NONROOT_UID:$NONROOT_UID" "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$NONROOT_UID" "$NONROOT_UID" > "$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:%s:\n' "$NONROOT_UID" > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  # 5. What must be there, and what must not.
  for path in usr/lib/x86_64-linux-gnu/libc.so.6 usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
    usr/lib/x86_64-linux-gnu/libz.so.1 lib64/ld-linux-x86-64.so.2; do
    [[ -e $root/$path ]] || die "base: $path missing"
  done
  path=$(find "$root" \( -name sh -o -name bash -o -name dash -o -name dpkg -o -name 'apt*' \
    -o -name busybox -o -name openssl \) -print -quit)
  [[ -z $path ]] || die "base: $path should not be there"
}

cmd_base() {
  local base
  base=$BASE_NAME:$(base_tag)
  # One build of a base at a time (tests may build images in parallel).
  exec 9>"$STATE/base.lock"
  flock 9
  if [[ ${REBUILD_BASE:-0} != 1 ]] && podman image exists "$base"; then
    say "base $base (cached)"
  else
    local start=$SECONDS
    build_base "$base"
    say "base $base built in $((SECONDS - start))s"
    # Bases of older recipes, unless an image still stands on them (vfs stores full copies).
    podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/$BASE_NAME:" |
      grep -v ":${base#*:}\$" | xargs -r podman rmi >/dev/null 2>&1 || true
  fi
  echo "$base"
}

# --------------------------------------------------------------------------
# image: the host's binaries on the base
# --------------------------------------------------------------------------

bin_dir() {
  if [[ -n ${BOOKWORM_BIN_DIR:-} ]]; then
    echo "$BOOKWORM_BIN_DIR"
    return
  fi
  say "cargo build --profile $PROFILE --bins"
  (cd "$ROOT" && cargo build --quiet --locked --profile "$PROFILE" --bins) >&2
  # cargo's directory for the dev profile is "debug".
  [[ $PROFILE == dev ]] && echo "$TARGET_DIR/debug" || echo "$TARGET_DIR/$PROFILE"
}

cmd_build() {
  local base bins context version revision source start=$SECONDS bin size old
  base=$(cmd_base)
  bins=$(bin_dir)
  context=$(scratch context)
  mkdir -p "$context/bin"
  for bin in worker graph-writer bookworm; do
    [[ -x $bins/$bin ]] || die "$bins/$bin: not built"
    # Stripped: symbols and debug information are most of a debug build's size.
    strip --strip-all -o "$context/bin/$bin" "$bins/$bin"
  done
  cp "$ROOT/Containerfile.runtime" "$context/Containerfile"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  source=${IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null ||
    sed -n 's/^repository = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml")}
  source=${source:-file://$ROOT}
  say "podman build $IMAGE from $bins on $base"
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  # --layers=false: no intermediate images (vfs stores each as a full copy of the tree).
  podman build --quiet --pull=never --layers=false \
    --build-arg "BASE=$base" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source" \
    -t "$IMAGE" -f "$context/Containerfile" "$context" >/dev/null
  # Each binary starts in it, as it will run: read-only, the image's user, no network.
  for bin in worker graph-writer bookworm; do
    podman run --rm --read-only --network none --entrypoint "/usr/local/bin/$bin" "$IMAGE" --help >/dev/null ||
      die "$bin does not start in $IMAGE"
  done
  # The image this tag named before, now untagged (it fails, harmlessly, if still in use).
  if [[ -n $old && $old != $(podman image inspect --format '{{.Id}}' "$IMAGE") ]]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  say "built $IMAGE in $((SECONDS - start))s: $((size / 1024 / 1024)) MiB ($size bytes)"
  echo "$IMAGE"
}

main() {
  case ${1:-build} in
    build) ensure_tools; write_config; cmd_build ;;
    base) ensure_tools; write_config; cmd_base ;;
    env) cmd_env ;;
    *) sed -n '2,6p' "$SELF" >&2; exit 2 ;;
  esac
}

main "$@"
