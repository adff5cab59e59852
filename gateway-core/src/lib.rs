//! An embeddable HTTP-to-gRPC forwarding gateway.
//!
//! Every HTTP request becomes one `forwarding.v1.ForwardingReq` sent with
//! `ForwardingService.Send` to an instance of the service it routes to; the
//! `ForwardingResp` becomes the HTTP response. The request path is one tower
//! stack ([`proxy::proxy_stack`]); discovery ([`registry`]) and selection
//! ([`balance`]) are separate; errors are classified once ([`error`]).
//!
//! ```no_run
//! use gateway_core::{config::GatewayConfig, gateway::{Gateway, Listeners}};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::default();
//! let gateway = Gateway::with_memory_registry(config.clone())?;
//! let listeners = Listeners::bind(&config).await?;
//! gateway.serve(listeners, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
pub mod config;
pub mod conn;
pub mod consul;
pub mod convert;
pub mod error;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod proxy;
pub mod registration;
pub mod registry;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod stream;
pub mod sync;
pub mod tls;
pub mod websocket;

pub use proto;
