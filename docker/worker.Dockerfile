# reelfarm worker: built with the cuda feature on the CUDA toolkit, run on the CUDA runtime
# (cuBLAS, cuRAND, NVRTC); the NVIDIA device plugin mounts the driver and libnvidia-ml.
# Without the `train` feature: the trainer and scene generator stay out of the image.
# Build from the repository root (CUDA_COMPUTE_CAP: 90 for H100/H200, 89 for L4, 80 for A100):
#   docker build -f docker/worker.Dockerfile --build-arg CUDA_COMPUTE_CAP=90 \
#       -t ghcr.io/reelfarm/reelfarm-worker:0.1.0 .
# syntax=docker/dockerfile:1.7
ARG CUDA_VERSION=12.6.3
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} PATH=/root/.cargo/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates gcc nasm \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p reelfarm --no-default-features --features cuda \
    && cp target/release/reelfarm /reelfarm

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin reelfarm
COPY --from=build /reelfarm /usr/local/bin/reelfarm
USER 10001:10001
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 7071 9465
ENTRYPOINT ["/usr/local/bin/reelfarm"]
CMD ["worker"]
