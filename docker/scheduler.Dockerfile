# reelfarm scheduler (and the CLI): a small runtime image, no GPU libraries.
# Build from the repository root:
#   docker build -f docker/scheduler.Dockerfile -t ghcr.io/reelfarm/reelfarm-scheduler:0.1.0 .
# syntax=docker/dockerfile:1.7
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends nasm && rm -rf /var/lib/apt/lists/*
COPY . .
# Registry and target caches survive between builds: only changed crates recompile.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reelfarm && cp target/release/reelfarm /reelfarm

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /reelfarm /usr/local/bin/reelfarm
USER 10001:10001
EXPOSE 7070 9464
ENTRYPOINT ["/usr/local/bin/reelfarm"]
CMD ["scheduler"]
