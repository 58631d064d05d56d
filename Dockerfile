# syntax=docker/dockerfile:1
#
# barista: one image holding every binary; each compose service picks its
# command (`producer`, `consumer`, `barista-registry`, `barista-demo`).
#
#   docker build -t barista:local .
#   docker run --rm barista:local barista-demo --help
#
# Requires BuildKit (the default builder of Docker >= 23 and of `docker compose`).

############################ builder ############################
FROM rust:1.95-bookworm AS builder

# rdkafka-sys compiles the bundled librdkafka with its mklove `configure`
# (no cmake); rusqlite's `bundled` feature compiles SQLite with the C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        build-essential \
        python3 \
        perl \
        pkg-config \
        zlib1g-dev \
        libssl-dev \
        libsasl2-dev \
        libzstd-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .

# The target dir lives in a cache mount, so the binaries are copied out of it
# in the same RUN (the mount is gone in later steps). `sharing=locked`
# serialises concurrent builds (compose may build several services at once).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/app/target,sharing=locked \
    set -eux; \
    cargo build --release --locked \
        --bin producer \
        --bin consumer \
        --bin barista-registry \
        --bin barista-demo; \
    mkdir -p /out; \
    for bin in producer consumer barista-registry barista-demo; do \
        cp "target/release/$bin" /out/; \
    done

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# curl: container health checks (`curl -fsS http://localhost:8090/ready`).
# sqlite3: for operators inspecting /data/*.db.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates \
        curl \
        libssl3 \
        libsasl2-2 \
        libzstd1 \
        zlib1g \
        sqlite3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 barista \
 && useradd --system --uid 10001 --gid barista \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin barista \
 && mkdir -p /data \
 && chown barista:barista /data

COPY --from=builder /out/ /usr/local/bin/

USER barista
WORKDIR /data
# A fresh named volume mounted here inherits the barista ownership above.
VOLUME ["/data"]

# No ENTRYPOINT: services choose the binary. The default runs the
# self-contained demo (in-process broker and registry).
CMD ["barista-demo"]
