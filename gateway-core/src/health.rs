//! Active health checks of one instance: the standard `grpc.health.v1`
//! protocol by default, or an HTTP GET; over TLS when the instance is
//! dialled over TLS (see [`crate::tls::backend_endpoint`]).

use std::time::Duration;

use http_body_util::Empty;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::registry::{CheckKind, Registration};
use crate::tls::{self, UpstreamTls};

/// Checks one instance again and again; keeps its connection between checks.
pub struct Checker {
    kind: CheckKind,
    address: String,
    timeout: Duration,
    channel: Option<Channel>,
    /// TLS for HTTP checks: the client config and the name to verify.
    http_tls: Option<(std::sync::Arc<rustls::ClientConfig>, String)>,
}

impl Checker {
    /// A checker for a registration (`None` for TTL checks: nothing to probe).
    /// `upstream` is the gateway's `[upstream_tls]`, for instances dialled
    /// over TLS.
    pub fn new(reg: &Registration, upstream: Option<&UpstreamTls>) -> Option<Self> {
        if reg.health.kind == CheckKind::Ttl {
            return None;
        }
        let server_name = reg.tls_server_name.as_deref();
        let channel = match reg.health.kind {
            CheckKind::Grpc { .. } => {
                tls::backend_endpoint(&reg.address, reg.tls, server_name, upstream)
                    .ok()
                    .map(|e| {
                        e.connect_timeout(reg.health.timeout)
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
            }
            _ => None,
        };
        let http_tls = upstream
            .filter(|u| u.applies(reg.tls))
            .map(|u| (u.rustls_config(), u.server_name(server_name, &reg.address)));
        Some(Self {
            kind: reg.health.kind.clone(),
            address: reg.address.clone(),
            timeout: reg.health.timeout,
            channel,
            http_tls,
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
            CheckKind::Http { path } => http_get(&self.address, path, self.http_tls.as_ref()).await,
            CheckKind::Ttl => Ok("ttl".into()),
        }
    }
}

async fn http_get(
    address: &str,
    path: &str,
    tls: Option<&(std::sync::Arc<rustls::ClientConfig>, String)>,
) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("http check connect: {e}"))?;
    let mut send = match tls {
        None => handshake(stream).await?,
        Some((config, name)) => {
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| format!("http check: server name {name:?}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("http check TLS: {e}"))?;
            handshake(stream).await?
        }
    };
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

async fn handshake<IO>(
    io: IO,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("http check: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamTlsConfig;
    use crate::registry::{HealthCheck, Visibility};

    fn reg(address: String, tls: bool) -> Registration {
        Registration {
            service: "svc".into(),
            instance_id: "svc-1".into(),
            address,
            routes: vec![],
            visibility: Visibility::Public,
            tags: vec![],
            metadata: Default::default(),
            weight: 100,
            health: HealthCheck {
                kind: CheckKind::Http {
                    path: "/health".into(),
                },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(5),
                deregister_critical_after: None,
            },
            lease: Duration::from_secs(30),
            streaming: false,
            tls,
            tls_server_name: Some("backend.test".into()),
        }
    }

    /// An HTTP check of a TLS instance speaks TLS, verified with the
    /// upstream CA bundle.
    #[tokio::test]
    async fn http_check_over_tls() {
        let (addr, pem) = crate::tls::test_server::start(
            "backend.test",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n".to_vec(),
        )
        .await;
        let dir = std::env::temp_dir().join(format!(
            "gw-health-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pem).unwrap();
        let upstream = UpstreamTls::load(&UpstreamTlsConfig {
            ca,
            ..Default::default()
        })
        .unwrap();

        let mut tls = Checker::new(&reg(addr.to_string(), true), Some(&upstream)).unwrap();
        assert_eq!(tls.check().await, Ok("http 204".to_owned()));
        // Plain HTTP against the TLS port does not pass.
        let mut plain = Checker::new(&reg(addr.to_string(), false), Some(&upstream)).unwrap();
        assert!(plain.check().await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
