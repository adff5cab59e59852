//! Active health checks of one instance: the standard `grpc.health.v1`
//! protocol by default, or an HTTP GET.

use std::time::Duration;

use http_body_util::Empty;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::registry::{CheckKind, Registration};

/// Checks one instance again and again; keeps its connection between checks.
pub struct Checker {
    kind: CheckKind,
    address: String,
    timeout: Duration,
    channel: Option<Channel>,
}

impl Checker {
    /// A checker for a registration (`None` for TTL checks: nothing to probe).
    pub fn new(reg: &Registration) -> Option<Self> {
        if reg.health.kind == CheckKind::Ttl {
            return None;
        }
        let channel = match reg.health.kind {
            CheckKind::Grpc { .. } => Endpoint::from_shared(format!("http://{}", reg.address))
                .ok()
                .map(|e| {
                    e.connect_timeout(reg.health.timeout)
                        .tcp_nodelay(true)
                        .connect_lazy()
                }),
            _ => None,
        };
        Some(Self {
            kind: reg.health.kind.clone(),
            address: reg.address.clone(),
            timeout: reg.health.timeout,
            channel,
        })
    }

    /// Runs one check: `Ok(detail)` when passing, `Err(detail)` when not.
    pub async fn check(&mut self) -> Result<String, String> {
        match tokio::time::timeout(self.timeout, self.probe()).await {
            Ok(r) => r,
            Err(_) => Err(format!("check timed out after {:?}", self.timeout)),
        }
    }

    async fn probe(&mut self) -> Result<String, String> {
        match &self.kind {
            CheckKind::Grpc { service } => {
                let channel = self.channel.clone().ok_or("invalid address")?;
                let resp = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                    .map_err(|s| format!("grpc health: {} {}", s.code(), s.message()))?;
                match resp.into_inner().status() {
                    ServingStatus::Serving => Ok("grpc health: SERVING".into()),
                    other => Err(format!("grpc health: {}", other.as_str_name())),
                }
            }
            CheckKind::Http { path } => http_get(&self.address, path).await,
            CheckKind::Ttl => Ok("ttl".into()),
        }
    }
}

async fn http_get(address: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("http check connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("http check: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, address)
        .header(http::header::USER_AGENT, "forwarding-gateway-health")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("http check: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("http check: {e}"))?;
    if resp.status().is_success() {
        Ok(format!("http {}", resp.status().as_u16()))
    } else {
        Err(format!("http {}", resp.status().as_u16()))
    }
}
