# syntax=docker/dockerfile:1
# One image with the three binaries of Relentless Bookworm: worker, graph-writer, bookworm.
#
#   docker build -t relentless-bookworm:dev \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE=https://your.git.host/relentless-bookworm .
#   docker run --rm relentless-bookworm:dev --help          (the entrypoint is bookworm)
#
# Kubernetes runs each binary by its `command` (/usr/local/bin/<name>); the image runs as
# uid 65532 and writes nothing outside /tmp, so a read-only root file system works.
# Without a registry (or a Rust toolchain in containers), scripts/image.sh builds the same
# runtime from host-built binaries with Containerfile.runtime: keep the two runtime stages
# equal (tests/image.rs compares them).

# ---- build: the official Rust image (Debian 12), same glibc as the runtime ----------------
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is compiled from source by rdkafka-sys (make, a C/C++ compiler, zlib headers:
# all in the rust image, which is built on buildpack-deps).
# The context is the crate (see .dockerignore): Cargo.toml, Cargo.lock, src/, migrations/
# (include_str!'d by the graph writer) and the declared bench/test targets cargo wants to see.
COPY . .
# Caches keep the registry and the target dir between builds (BuildKit); the binaries are
# copied out of the cache mount so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out/usr/local/bin \
 && cp target/release/worker target/release/graph-writer target/release/bookworm /out/usr/local/bin/
# Shared libraries the binaries need that the runtime image lacks: rdkafka links zlib
# dynamically (libz-sys finds the system library), and distroless/cc has no zlib1g.
# Copied into the same multiarch directory, so the dynamic loader finds them by default.
RUN multiarch=$(gcc -print-multiarch) \
 && mkdir -p "/out/usr/lib/$multiarch" \
 && cp -P /usr/lib/$multiarch/libz.so.1 /usr/lib/$multiarch/libz.so.1.* "/out/usr/lib/$multiarch/"

# ---- runtime: distroless, C/C++ runtime only, non-root -------------------------------------
# gcr.io/distroless/cc-debian12 is built from these Debian 12 packages (scripts/check-deploy.sh
# image verifies with ldd that every library the binaries load comes from one of them or is
# copied above, then runs the binaries in a root file system made of exactly these packages):
# check-deploy: runtime-packages libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 ca-certificates
# check-deploy: copied-libs libz.so.1
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="relentless-bookworm" \
      org.opencontainers.image.description="A distributed, polite crawler of the Open Library API that builds a Neo4j graph" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/ /
# distroless "nonroot": uid/gid 65532, no shell, no package manager.
USER 65532:65532
ENV PATH=/usr/local/bin \
    LOG_FORMAT=json
EXPOSE 8080 9101 9102
# `bookworm` runs by default (serve, sim, topics, crawl...); the worker and the graph writer
# replace the entrypoint (compose `entrypoint:`, Kubernetes `command:`).
ENTRYPOINT ["/usr/local/bin/bookworm"]
CMD ["--help"]
