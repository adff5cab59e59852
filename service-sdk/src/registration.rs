//! Keeping a registration alive: register (retrying with backoff while the
//! gateway is down), renew within the lease, register again when the gateway
//! answers NOT_FOUND (it restarted or the lease ran out), deregister on
//! shutdown.

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::registry_service_client::RegistryServiceClient;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

/// Registers one instance with a gateway and keeps it registered.
#[derive(Clone)]
pub struct Registrar {
    client: RegistryServiceClient<Channel>,
    registration: pb::Registration,
    token: Option<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Registrar {
    /// A registrar talking gRPC to `gateway_url` (e.g. `http://127.0.0.1:8090`).
    pub fn new(
        gateway_url: &str,
        registration: pb::Registration,
        token: Option<String>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(gateway_url.to_owned())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self {
            client: RegistryServiceClient::new(channel),
            registration,
            token,
        })
    }

    /// The same registrar talking to `gateway_url` over TLS (an `https://`
    /// URL, e.g. `https://gateway.internal:8090`).
    pub fn with_tls(
        mut self,
        gateway_url: &str,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(gateway_url.to_owned())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        self.client = RegistryServiceClient::new(channel);
        Ok(self)
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// Registers once.
    pub async fn register(&self) -> Result<pb::RegisterResponse, tonic::Status> {
        let req = self.request(pb::RegisterRequest {
            registration: Some(self.registration.clone()),
        });
        Ok(self.client.clone().register(req).await?.into_inner())
    }

    /// Deregisters (idempotent).
    pub async fn deregister(&self) -> Result<(), tonic::Status> {
        let id = if self.registration.instance_id.is_empty() {
            format!(
                "{}-{}",
                self.registration.service,
                self.registration.address.replace(['[', ']'], "")
            )
        } else {
            self.registration.instance_id.clone()
        };
        let req = self.request(pb::DeregisterRequest {
            service: self.registration.service.clone(),
            instance_id: id,
        });
        self.client.clone().deregister(req).await.map(|_| ())
    }

    /// Registers, then renews forever; never returns (abort the task).
    pub async fn run(self, on_registered: impl Fn(&str) + Send) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (id, lease) = match self.register().await {
                Ok(r) => {
                    info!(service = %self.registration.service, instance = %r.instance_id, "Registered with the gateway.");
                    backoff = Duration::from_millis(100);
                    (r.instance_id, Duration::from_millis(r.lease_ms.max(300)))
                }
                Err(s)
                    if s.code() == tonic::Code::InvalidArgument
                        || s.code() == tonic::Code::Unauthenticated
                        || s.code() == tonic::Code::PermissionDenied =>
                {
                    // Retrying cannot fix a rejected registration; say so
                    // loudly, and retry slowly in case the operator fixes
                    // the gateway's settings.
                    warn!(code = ?s.code(), message = s.message(), "Registration rejected by the gateway.");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
                Err(s) => {
                    debug!(code = ?s.code(), message = s.message(), "Gateway not reachable; retrying.");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            on_registered(&id);
            loop {
                tokio::time::sleep(lease / 3).await;
                let req = self.request(pb::RenewRequest {
                    service: self.registration.service.clone(),
                    instance_id: id.clone(),
                });
                match self.client.clone().renew(req).await {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        info!(instance = %id, "The gateway forgot this instance; registering again.");
                        break;
                    }
                    Err(s) => {
                        // Gateway restarting or unreachable: re-register as
                        // soon as it answers (registering is idempotent).
                        debug!(code = ?s.code(), "Renewal failed; registering again.");
                        break;
                    }
                }
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // Spread retries of many instances; no RNG dependency needed for this.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64((nanos % 1000) as f64 / 2000.0)
}
