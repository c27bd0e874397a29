# stateful-guard image: the release binary on distroless (glibc, no shell), non-root.
#   docker build -t stateful-guard:0.1.0 .
# CI runs this build stage as written, without a container engine (scripts/image-binary), and
# tests the binary it makes against the runtime stage below and the Deployment in deploy/
# (tests/image.rs): the libraries and glibc it needs, its user, its port, its flags.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY policies ./policies
COPY benches ./benches
COPY scripts/build-release ./scripts/build-release
RUN scripts/build-release out/stateful-guard

FROM gcr.io/distroless/cc-debian12:nonroot
# The binary's allocator is mimalloc (src/main.rs). It returns freed pages to the system 10 ms
# after they are freed instead of a second later: a webhook that has just decoded its initial
# lists and then waits would otherwise keep them (49 MiB instead of 29 at 10,000 PDBs). Not at
# once (0): under load that unmaps and refaults pages in some runs, a third of the throughput
# lost (docs/performance.md).
ENV MIMALLOC_PURGE_DELAY=10
COPY --from=build /src/out/stateful-guard /usr/local/bin/stateful-guard
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/stateful-guard"]
CMD ["serve", "--listen=0.0.0.0:8443"]
