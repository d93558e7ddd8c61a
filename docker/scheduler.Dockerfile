# reelfarm scheduler (and the client verbs): a small runtime image, no GPU libraries, built
# without the `worker` and `train` features, so no candle, OpenH264 or model weights
# (tests/tests/layout.rs checks that build's dependency tree).
# Build from the repository root:
#   docker build -f docker/scheduler.Dockerfile -t ghcr.io/reelfarm/reelfarm-scheduler:0.1.0 .
# syntax=docker/dockerfile:1.7
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Registry and target caches survive between builds: only changed crates recompile.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reelfarm --no-default-features \
    && cp target/release/reelfarm /reelfarm

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /reelfarm /usr/local/bin/reelfarm
USER 10001:10001
EXPOSE 7070 9464
ENTRYPOINT ["/usr/local/bin/reelfarm"]
CMD ["scheduler"]
