# Drop-in replacement for the Python replication server of Blender Multi-User.
# Build stage: compiles the server (libzmq is built from source by the zmq crate).
FROM rust:1-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin replication-server

# Runtime stage: the binary, a non-root user and the data volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin replication \
    && mkdir -p /app/data /app/logs \
    && chown -R replication /app
COPY --from=build /src/target/release/replication-server /usr/local/bin/replication-server
COPY docker/entrypoint.sh /usr/local/bin/entrypoint.sh
ENV PORT=5555 \
    ADMIN_PASSWORD=admin \
    SERVER_PASSWORD= \
    LOG_LEVEL=INFO \
    LOG_FILE= \
    TIMEOUT=10000 \
    DATA_DIR=/app/data \
    SAVE_INTERVAL=120 \
    MAX_BACKUPS=10 \
    JOURNAL_FSYNC=everysec \
    MAX_MESSAGE_SIZE=268435456 \
    BIND_ADDRESS=0.0.0.0 \
    RETAINED_METADATA_KEYS=tasks,chat_messages \
    LOG_FORMAT=text \
    ADMIN_ADDR=127.0.0.1:5558
EXPOSE 5555 5556 5557
VOLUME /app/data
USER replication
WORKDIR /app
# Asks the server for its info over the protocol, as a client would, and
# its admin endpoint whether saves work.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["replication-server", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
