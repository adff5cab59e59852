# The gateway and the Rust example in one small image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway-bin -p order-service

FROM debian:bookworm-slim
COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY --from=build /src/target/release/order-service /usr/local/bin/order-service
EXPOSE 8080 8081 8090 8091
ENTRYPOINT []
CMD ["gateway"]
