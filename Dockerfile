# stateful-guard image: a static musl binary on distroless, non-root.
#   docker build -t stateful-guard:0.1.0 .
# The build runs the same cargo build as scripts/test's, in release mode.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY policies ./policies
RUN cargo build --locked --release --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/stateful-guard /stateful-guard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /stateful-guard /usr/local/bin/stateful-guard
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/stateful-guard"]
CMD ["serve", "--listen=0.0.0.0:8443"]
