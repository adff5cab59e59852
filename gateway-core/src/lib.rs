//! An embeddable HTTP-to-gRPC forwarding gateway.
//!
//! Every HTTP request becomes one `forwarding.v1.ForwardingReq` sent with
//! `ForwardingService.Send` to an instance of the service it routes to; the
//! `ForwardingResp` becomes the HTTP response. The request path is one tower
//! stack ([`proxy::proxy_stack`]); discovery ([`registry`]) and selection
//! ([`balance`]) are separate; errors are classified once ([`error`]).
//!
//! Cargo features: `consul` (the Consul registry, over reqwest) and `kafka`
//! (replica sync over Kafka, librdkafka), both on by default. An embedder
//! that wants neither sets `default-features = false` and compiles neither.
//!
//! ```no_run
//! use gateway_core::{config::GatewayConfig, gateway::{Gateway, Listeners}};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::default();
//! let gateway = Gateway::builder(config.clone()).build().await?;
//! let listeners = Listeners::bind(&config).await?;
//! gateway.serve(listeners, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod cache;
pub mod canary;
pub mod config;
pub(crate) mod conn;
pub mod convert;
pub mod error;
pub mod explain;
pub(crate) mod forward;
#[cfg(all(any(test, feature = "fuzzing"), feature = "consul", feature = "kafka"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod otel;
pub(crate) mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod registration;
pub mod registry;
pub mod request_id;
pub mod route_rules;
pub mod routing;
pub mod server;
pub mod shared;
pub mod stream;
pub mod tls;
pub(crate) mod upstream;
pub mod websocket;

pub use proto;
