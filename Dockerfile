# The gateway and the Rust example service (order-service) in one small
# image; docker-compose.yml runs gw1..gw3 and `order` from it. The Python
# example has its own image (inline in docker-compose.yml): no Python here.
#
#   docker build -t forwarding-gateway .
#   docker run --rm -p 8080:8080 -p 8091:8091 forwarding-gateway
#
# Needs BuildKit (the default builder of Docker >= 23 and of `docker compose`)
# for the cache mounts, which keep the crate registry and target/ between builds.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway-bin -p order-service \
 && mkdir -p /out \
 && cp target/release/gateway target/release/order-service /out/

FROM debian:bookworm-slim
# curl: health checks (GET /readyz on the admin listener; docker-compose.yml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /out/gateway /out/order-service /usr/local/bin/
# Inside a container the listeners must not be on loopback (the binary's
# default); flags and GATEWAY_* variables still override these.
ENV GATEWAY_PUBLIC_ADDR=0.0.0.0:8080 \
    GATEWAY_INTERNAL_ADDR=0.0.0.0:8081 \
    GATEWAY_REGISTRATION_ADDR=0.0.0.0:8090 \
    GATEWAY_ADMIN_ADDR=0.0.0.0:8091
USER gateway
EXPOSE 8080 8081 8090 8091
ENTRYPOINT []
CMD ["gateway"]
