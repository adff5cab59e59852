//! The registration API, served on the registration listener: gRPC
//! `forwarding.v1.RegistryService` and the same operations as HTTP/JSON
//! (`openapi/registry.v1.yaml`). Both go through [`RegistrationApi`], so
//! validation, authorisation and errors are the same on both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::info;

use crate::registry::{
    Health, InvalidField, Registration, RegistrationPolicy, Registry, RegistryError,
};

/// Why a registration call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The body is not valid JSON for a registration.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Missing or wrong registration token.
    #[error("missing or invalid registration token")]
    Unauthenticated,
    /// The registry refused or is unavailable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_field",
            ApiError::Json(_) => "invalid_json",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Registry(RegistryError::NotFound { .. }) => "not_found",
            ApiError::Registry(RegistryError::Unavailable(_)) => "registry_unavailable",
            ApiError::Registry(RegistryError::Rejected(_)) => "invalid_field",
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::Invalid(_) | ApiError::Json(_) => tonic::Status::invalid_argument(msg),
            ApiError::Unauthenticated => tonic::Status::unauthenticated(msg),
            ApiError::Registry(RegistryError::NotFound { .. }) => tonic::Status::not_found(msg),
            ApiError::Registry(RegistryError::Unavailable(_)) => tonic::Status::unavailable(msg),
            ApiError::Registry(RegistryError::Rejected(_)) => tonic::Status::invalid_argument(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Invalid(_) | ApiError::Json(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Registry(RegistryError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ApiError::Registry(RegistryError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Registry(RegistryError::Rejected(_)) => StatusCode::BAD_REQUEST,
        };
        let field = match &self {
            ApiError::Invalid(f) => Some(f.field.clone()),
            _ => None,
        };
        let body =
            json!({"error": {"code": self.code(), "message": self.to_string(), "field": field}});
        (status, axum::Json(body)).into_response()
    }
}

/// Validation + authorisation + registry calls shared by gRPC and HTTP.
#[derive(Clone)]
pub struct RegistrationApi {
    registry: Arc<dyn Registry>,
    policy: Arc<RegistrationPolicy>,
    token: Option<Arc<str>>,
    /// The balancer routing this registry's catalogue, when there is one.
    balancer: Option<Arc<crate::balance::Balancer>>,
}

impl RegistrationApi {
    /// A new API over a registry.
    pub fn new(
        registry: Arc<dyn Registry>,
        policy: RegistrationPolicy,
        token: Option<String>,
    ) -> Self {
        Self {
            registry,
            policy: Arc::new(policy),
            token: token.map(Into::into),
            balancer: None,
        }
    }

    /// Acknowledges a registration only once `balancer` routes it (its
    /// snapshot is rebuilt on its own task): a client that registers and
    /// then calls through this gateway at once finds the route.
    pub fn routing_with(mut self, balancer: Arc<crate::balance::Balancer>) -> Self {
        self.balancer = Some(balancer);
        self
    }

    /// Checks `authorization: Bearer <token>` when a token is configured.
    /// Compared in constant time so the token cannot be guessed byte by byte.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let expected = token.as_bytes();
        let same = given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(ApiError::Unauthenticated)
        }
    }

    /// Validates and stores a registration.
    pub async fn register(&self, reg: pb::Registration) -> Result<pb::RegisterResponse, ApiError> {
        let reg = Registration::from_proto(reg, &self.policy)?;
        let (service, address) = (reg.service.clone(), reg.address.clone());
        let out = self.registry.register(reg).await?;
        if let Some(b) = &self.balancer {
            // The registry published the registration before answering;
            // bounded, in case a registry publishes nothing for it.
            let version = self.registry.watch().borrow().version;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), b.wait_applied(version))
                    .await;
        }
        if out.created {
            info!(service = %service, instance = %out.instance_id, address = %address, "Instance registered.");
        }
        Ok(pb::RegisterResponse {
            instance_id: out.instance_id,
            lease_ms: out.lease.as_millis() as u64,
            created: out.created,
        })
    }

    /// Removes an instance (idempotent).
    pub async fn deregister(
        &self,
        service: &str,
        instance_id: &str,
    ) -> Result<pb::DeregisterResponse, ApiError> {
        key_fields(service, instance_id)?;
        let existed = self.registry.deregister(service, instance_id).await?;
        if existed {
            info!(service, instance = instance_id, "Instance deregistered.");
        }
        Ok(pb::DeregisterResponse { existed })
    }

    /// Extends a lease.
    pub async fn renew(
        &self,
        service: &str,
        instance_id: &str,
    ) -> Result<pb::RenewResponse, ApiError> {
        key_fields(service, instance_id)?;
        let lease = self.registry.renew(service, instance_id).await?;
        Ok(pb::RenewResponse {
            lease_ms: lease.as_millis() as u64,
        })
    }

    /// Lists instances, optionally of one service.
    pub fn list(&self, service: &str) -> pb::ListResponse {
        let catalog = self.registry.watch().borrow().clone();
        let now = Instant::now();
        let instances = catalog
            .instances
            .iter()
            .filter(|i| service.is_empty() || i.registration.service == service)
            .map(|i| pb::InstanceStatus {
                registration: Some(i.registration.to_proto()),
                health: match i.health {
                    Health::Unknown => pb::HealthState::Unknown,
                    Health::Passing => pb::HealthState::Passing,
                    Health::Failing => pb::HealthState::Failing,
                } as i32,
                health_detail: i.detail.to_string(),
                lease_remaining_ms: i
                    .lease_deadline
                    .map(|d| d.saturating_duration_since(now).as_millis() as u64)
                    .unwrap_or(0),
            })
            .collect();
        pb::ListResponse { instances }
    }
}

fn key_fields(service: &str, instance_id: &str) -> Result<(), ApiError> {
    let bad = |field: &str| {
        Err(ApiError::Invalid(InvalidField {
            field: field.into(),
            reason: "is required".into(),
        }))
    };
    if service.is_empty() {
        return bad("service");
    }
    if instance_id.is_empty() {
        return bad("instance_id");
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistrationApi {
    async fn register(
        &self,
        req: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        self.authorize(req.metadata().get("authorization").map(|v| v.as_bytes()))?;
        let reg = req.into_inner().registration.ok_or_else(|| {
            ApiError::Invalid(InvalidField {
                field: "registration".into(),
                reason: "is required".into(),
            })
        })?;
        Ok(tonic::Response::new(
            RegistrationApi::register(self, reg).await?,
        ))
    }

    async fn deregister(
        &self,
        req: tonic::Request<pb::DeregisterRequest>,
    ) -> Result<tonic::Response<pb::DeregisterResponse>, tonic::Status> {
        self.authorize(req.metadata().get("authorization").map(|v| v.as_bytes()))?;
        let r = req.into_inner();
        Ok(tonic::Response::new(
            RegistrationApi::deregister(self, &r.service, &r.instance_id).await?,
        ))
    }

    async fn renew(
        &self,
        req: tonic::Request<pb::RenewRequest>,
    ) -> Result<tonic::Response<pb::RenewResponse>, tonic::Status> {
        self.authorize(req.metadata().get("authorization").map(|v| v.as_bytes()))?;
        let r = req.into_inner();
        Ok(tonic::Response::new(
            RegistrationApi::renew(self, &r.service, &r.instance_id).await?,
        ))
    }

    async fn list(
        &self,
        req: tonic::Request<pb::ListRequest>,
    ) -> Result<tonic::Response<pb::ListResponse>, tonic::Status> {
        Ok(tonic::Response::new(RegistrationApi::list(
            self,
            &req.into_inner().service,
        )))
    }
}

// ---- HTTP/JSON ----------------------------------------------------------

/// JSON form of a registration (see the OpenAPI document).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationJson {
    /// Service name.
    pub service: String,
    /// Instance id ("" = derived).
    pub instance_id: String,
    /// host:port.
    pub address: String,
    /// Routes.
    pub routes: Vec<RouteJson>,
    /// "public", "internal" or "admin".
    pub visibility: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Weight (0 = 100).
    pub weight: u32,
    /// Health check.
    pub health: Option<HealthJson>,
    /// Lease in ms (0 = default).
    pub lease_ms: u64,
    /// The instance implements `ForwardingService.Stream`.
    pub streaming: bool,
    /// The instance serves TLS (dialled with the gateway's `[upstream_tls]`).
    pub tls: bool,
    /// Name its certificate is checked against ("" = default).
    pub tls_server_name: String,
}

/// JSON form of a route.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteJson {
    /// Path prefix.
    pub path_prefix: String,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Timeout in ms (0 = default).
    pub timeout_ms: u64,
    /// Always use `Stream` on this route.
    pub stream: bool,
    /// Longest `Stream` exchange in ms (0 = default).
    pub max_duration_ms: u64,
}

/// JSON form of a health check.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthJson {
    /// "grpc" (default), "http" or "ttl".
    pub kind: Option<String>,
    /// gRPC health service name.
    pub grpc_service: String,
    /// HTTP path.
    pub http_path: String,
    /// Interval in ms.
    pub interval_ms: u64,
    /// Timeout in ms.
    pub timeout_ms: u64,
    /// Deregister after critical for this long, ms.
    pub deregister_critical_after_ms: u64,
}

impl RegistrationJson {
    /// Into the wire form; unknown enum strings are named field errors.
    pub fn into_proto(self) -> Result<pb::Registration, InvalidField> {
        let visibility = match self.visibility.as_deref() {
            None | Some("public") => pb::Visibility::Public,
            Some("internal") => pb::Visibility::Internal,
            Some("admin") => pb::Visibility::Admin,
            Some(other) => {
                return Err(InvalidField {
                    field: "registration.visibility".into(),
                    reason: format!("unknown value {other:?} (public, internal, admin)"),
                });
            }
        };
        let health = match self.health {
            None => None,
            Some(h) => Some(pb::HealthCheck {
                kind: match h.kind.as_deref() {
                    None | Some("grpc") => pb::health_check::Kind::Grpc,
                    Some("http") => pb::health_check::Kind::Http,
                    Some("ttl") => pb::health_check::Kind::Ttl,
                    Some(other) => {
                        return Err(InvalidField {
                            field: "registration.health.kind".into(),
                            reason: format!("unknown value {other:?} (grpc, http, ttl)"),
                        });
                    }
                } as i32,
                grpc_service: h.grpc_service,
                http_path: h.http_path,
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                deregister_critical_after_ms: h.deregister_critical_after_ms,
            }),
        };
        Ok(pb::Registration {
            service: self.service,
            instance_id: self.instance_id,
            address: self.address,
            routes: self
                .routes
                .into_iter()
                .map(|r| pb::Route {
                    path_prefix: r.path_prefix,
                    hosts: r.hosts,
                    timeout_ms: r.timeout_ms,
                    stream: r.stream,
                    max_duration_ms: r.max_duration_ms,
                })
                .collect(),
            visibility: visibility as i32,
            tags: self.tags,
            metadata: self.metadata.into_iter().collect(),
            weight: self.weight,
            health,
            lease_ms: self.lease_ms,
            streaming: self.streaming,
            tls: self.tls,
            tls_server_name: self.tls_server_name,
        })
    }
}

/// JSON view of a registration from its wire form.
pub fn registration_to_json(r: &pb::Registration) -> serde_json::Value {
    let vis = match pb::Visibility::try_from(r.visibility) {
        Ok(pb::Visibility::Internal) => "internal",
        Ok(pb::Visibility::Admin) => "admin",
        _ => "public",
    };
    let h = r.health.clone().unwrap_or_default();
    let kind = match pb::health_check::Kind::try_from(h.kind) {
        Ok(pb::health_check::Kind::Http) => "http",
        Ok(pb::health_check::Kind::Ttl) => "ttl",
        _ => "grpc",
    };
    json!({
        "service": r.service,
        "instance_id": r.instance_id,
        "address": r.address,
        "routes": r.routes.iter().map(|rt| json!({"path_prefix": rt.path_prefix, "hosts": rt.hosts, "timeout_ms": rt.timeout_ms, "stream": rt.stream, "max_duration_ms": rt.max_duration_ms})).collect::<Vec<_>>(),
        "visibility": vis,
        "tags": r.tags,
        "metadata": r.metadata.iter().collect::<BTreeMap<_, _>>(),
        "weight": r.weight,
        "health": {"kind": kind, "grpc_service": h.grpc_service, "http_path": h.http_path, "interval_ms": h.interval_ms, "timeout_ms": h.timeout_ms, "deregister_critical_after_ms": h.deregister_critical_after_ms},
        "lease_ms": r.lease_ms,
        "streaming": r.streaming,
        "tls": r.tls,
        "tls_server_name": r.tls_server_name,
    })
}

fn health_name(h: i32) -> &'static str {
    match pb::HealthState::try_from(h) {
        Ok(pb::HealthState::Passing) => "passing",
        Ok(pb::HealthState::Failing) => "failing",
        _ => "unknown",
    }
}

/// JSON list of instances.
pub fn list_to_json(l: &pb::ListResponse) -> serde_json::Value {
    json!({
        "instances": l.instances.iter().map(|i| json!({
            "registration": i.registration.as_ref().map(registration_to_json),
            "health": health_name(i.health),
            "health_detail": i.health_detail,
            "lease_remaining_ms": i.lease_remaining_ms,
        })).collect::<Vec<_>>()
    })
}

async fn http_register(
    State(api): State<RegistrationApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    api.authorize(headers.get("authorization").map(|v| v.as_bytes()))?;
    let json: RegistrationJson =
        serde_json::from_slice(&body).map_err(|e| ApiError::Json(e.to_string()))?;
    let out = api.register(json.into_proto()?).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({"instance_id": out.instance_id, "lease_ms": out.lease_ms, "created": out.created})),
    )
        .into_response())
}

async fn http_deregister(
    State(api): State<RegistrationApi>,
    headers: HeaderMap,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    api.authorize(headers.get("authorization").map(|v| v.as_bytes()))?;
    let out = api.deregister(&service, &id).await?;
    Ok(axum::Json(json!({"existed": out.existed})).into_response())
}

async fn http_renew(
    State(api): State<RegistrationApi>,
    headers: HeaderMap,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    api.authorize(headers.get("authorization").map(|v| v.as_bytes()))?;
    let out = api.renew(&service, &id).await?;
    Ok(axum::Json(json!({"lease_ms": out.lease_ms})).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    service: String,
}

async fn http_list(State(api): State<RegistrationApi>, Query(q): Query<ListQuery>) -> Response {
    axum::Json(list_to_json(&api.list(&q.service))).into_response()
}

/// The registration listener's router: gRPC and HTTP/JSON side by side
/// (gRPC requests are recognised by their `/forwarding.v1.RegistryService/`
/// paths).
pub fn router(api: RegistrationApi) -> Router {
    let grpc = pb::registry_service_server::RegistryServiceServer::new(api.clone());
    Router::new()
        .route_service("/forwarding.v1.RegistryService/{*method}", grpc)
        .route("/v1/registrations", put(http_register).post(http_register).get(http_list))
        .route("/v1/registrations/{service}/{instance_id}", axum::routing::delete(http_deregister))
        .route("/v1/registrations/{service}/{instance_id}/renew", post(http_renew))
        .route("/openapi.yaml", get(|| async { ([("content-type", "application/yaml")], OPENAPI) }))
        .with_state(api)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": {"code": "not_found", "message": "unknown registration API path"}})),
            )
        })
}

/// The OpenAPI document of the HTTP/JSON registration API.
pub const OPENAPI: &str = include_str!("../../openapi/registry.v1.yaml");

#[cfg(test)]
mod tests;
