# syntax=docker/dockerfile:1
# swarmstate: one static-ish binary (glibc) on debian:bookworm-slim, no redis-server inside —
# point it at your Redis with SWARMSTATE_REDIS_URL (see docker-compose.yml, README "Deploy").
#
#   docker build -t swarmstate .
#   docker run --rm -p 8080:8080 -e SWARMSTATE_REDIS_URL=redis://redis:6379 \
#     -v "$PWD/tokens.toml:/etc/swarmstate/tokens.toml:ro" \
#     -e SWARMSTATE_TOKENS_FILE=/etc/swarmstate/tokens.toml swarmstate
#
# Without a tokens file (or SWARMSTATE_INSECURE_NO_AUTH=true, to run open on purpose) the
# default command refuses to start: it listens on 0.0.0.0 and says why.

ARG RUST_VERSION=1.95

# Dependencies are compiled in their own layer (cargo-chef): a change to the service's own
# sources rebuilds only the last step.
FROM lukemathwalker/cargo-chef:latest-rust-${RUST_VERSION}-slim-bookworm AS chef
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The vendored fred is a path dependency: its real sources are needed to cook.
COPY vendor vendor
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin swarmstate
COPY . .
RUN cargo build --release --locked --bin swarmstate \
    && strip target/release/swarmstate \
    && mkdir -p /out/data \
    && cp target/release/swarmstate /out/swarmstate

FROM debian:bookworm-slim AS runtime
# An unprivileged user that owns nothing but /data. The root filesystem can be read-only
# (tested: scripts/deploy-tests.sh runs the release binary as uid 10001 on a read-only root).
RUN groupadd --system --gid 10001 swarmstate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin swarmstate
# CA roots for rediss:// without installing packages in this stage.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder --chown=10001:10001 /out/data /data
COPY --from=builder /out/swarmstate /usr/local/bin/swarmstate
ENV SWARMSTATE_LISTEN=0.0.0.0:8080 \
    SWARMSTATE_DATA_DIR=/data \
    SWARMSTATE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Slim images have no curl: the binary checks its own /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["swarmstate", "healthcheck"]
ENTRYPOINT ["swarmstate"]
CMD ["serve"]
