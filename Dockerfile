# Multi-stage build of the hartslag image for registries (needs a Docker engine; on machines
# without one, image/build-oci.sh builds the same image as an OCI archive with umoci).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin hartslag

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="hartslag" \
      org.opencontainers.image.description="Kubernetes-native heartbeat service: event tracking and dead-man's-switch monitors" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/hartslag /usr/local/bin/hartslag
USER 65532:65532
WORKDIR /data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hartslag"]
CMD ["operator"]
