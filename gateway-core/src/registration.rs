//! The registration API, served on the registration listener: gRPC
//! `forwarding.v1.RegistryService` and the same operations as HTTP/JSON
//! (`openapi/registry.v1.yaml`). Both go through [`RegistrationApi`], so
//! validation, authorisation and errors are the same on both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::config::ScopedToken;
use crate::registry::{
    Health, InvalidField, Registration, RegistrationPolicy, Registry, RegistryError,
};
use crate::server::PeerAddr;

/// Largest HTTP/JSON request body the registration API reads (413
/// `body_too_large` above it). A registration is a few KiB at most.
pub const MAX_HTTP_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Largest gRPC request message the registration API decodes
/// (`RESOURCE_EXHAUSTED` above it; tonic's own default, made explicit).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a registration call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The body is not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The body is larger than the API reads.
    #[error("request body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Missing or unknown registration token.
    #[error("missing or invalid registration token")]
    Unauthenticated,
    /// A known token whose scope does not cover the service.
    #[error("the registration token does not cover service {service:?}")]
    Forbidden {
        /// The service the call was about.
        service: String,
    },
    /// The registry refused or is unavailable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_field",
            ApiError::Json(_) => "invalid_json",
            ApiError::TooLarge { .. } => "body_too_large",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden { .. } => "forbidden",
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
            ApiError::TooLarge { .. } => tonic::Status::resource_exhausted(msg),
            ApiError::Unauthenticated => tonic::Status::unauthenticated(msg),
            ApiError::Forbidden { .. } => tonic::Status::permission_denied(msg),
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
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
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
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 11.6.1: a 401 names the scheme it wants.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"registration\""),
            );
        }
        resp
    }
}

/// A configured token and what it may touch.
#[derive(Clone)]
struct Credential {
    secret: Box<[u8]>,
    /// `None` = every service (`registration.token`).
    scope: Option<ScopedToken>,
}

/// What an authenticated caller may touch, and who it is (for the log).
/// Valid only with the [`RegistrationApi`] that issued it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Index into the credentials; `None` = no token is configured.
    credential: Option<usize>,
    /// The TCP peer, when known.
    peer: Option<SocketAddr>,
}

/// Rejected registration calls, by cause (shown on the admin listener).
#[derive(Debug, Default)]
pub struct Rejections {
    /// Missing or unknown token (401 / UNAUTHENTICATED).
    pub unauthenticated: AtomicU64,
    /// A valid token outside its scope (403 / PERMISSION_DENIED).
    pub forbidden: AtomicU64,
}

/// Validation + authorisation + registry calls shared by gRPC and HTTP.
#[derive(Clone)]
pub struct RegistrationApi {
    registry: Arc<dyn Registry>,
    policy: Arc<RegistrationPolicy>,
    credentials: Arc<[Credential]>,
    rejections: Arc<Rejections>,
    /// The balancer routing this registry's catalogue, when there is one.
    balancer: Option<Arc<crate::balance::Balancer>>,
}

/// Parses `authorization: Bearer <token>`: the scheme is case-insensitive
/// (RFC 9110 11.1), one or more spaces separate it from the token.
fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let space = authorization.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = authorization.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit, so the time taken does not tell how many
/// leading bytes of a guess were right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl RegistrationApi {
    /// A new API over a registry; `token` (if any) may touch every service.
    pub fn new(
        registry: Arc<dyn Registry>,
        policy: RegistrationPolicy,
        token: Option<String>,
    ) -> Self {
        let credentials: Vec<Credential> = token
            .map(|t| Credential {
                secret: t.into_bytes().into(),
                scope: None,
            })
            .into_iter()
            .collect();
        Self {
            registry,
            policy: Arc::new(policy),
            credentials: credentials.into(),
            rejections: Arc::default(),
            balancer: None,
        }
    }

    /// Adds tokens limited to some services (`registration.tokens`).
    pub fn scoped_tokens(mut self, tokens: impl IntoIterator<Item = ScopedToken>) -> Self {
        let mut all = self.credentials.to_vec();
        all.extend(tokens.into_iter().map(|t| Credential {
            secret: t.token.as_bytes().into(),
            scope: Some(t),
        }));
        self.credentials = all.into();
        self
    }

    /// Acknowledges a registration only once `balancer` routes it (its
    /// snapshot is rebuilt on its own task): a client that registers and
    /// then calls through this gateway at once finds the route.
    pub fn routing_with(mut self, balancer: Arc<crate::balance::Balancer>) -> Self {
        self.balancer = Some(balancer);
        self
    }

    /// Rejected calls so far.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// Checks `authorization: Bearer <token>` when any token is configured:
    /// the token must be one of them (401 otherwise). `service` is only for
    /// the log line of a rejection, when the caller named one already.
    /// Every configured token is compared, in constant time each.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<SocketAddr>,
        service: Option<&str>,
    ) -> Result<Caller, ApiError> {
        if self.credentials.is_empty() {
            return Ok(Caller {
                credential: None,
                peer,
            });
        }
        // No bearer token at all never matches, not even a secret left
        // empty by a configuration that skipped validation.
        let found = authorization.and_then(bearer).and_then(|given| {
            self.credentials
                .iter()
                .enumerate()
                .fold(None, |found, (i, c)| {
                    if same_secret(given, &c.secret) {
                        Some(i)
                    } else {
                        found
                    }
                })
        });
        match found {
            Some(i) => Ok(Caller {
                credential: Some(i),
                peer,
            }),
            None => {
                self.rejections
                    .unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    service = service.unwrap_or("-"),
                    peer = %peer.map_or("-".to_owned(), |p| p.to_string()),
                    presented = authorization.is_some(),
                    "Registration call rejected: missing or unknown token."
                );
                Err(ApiError::Unauthenticated)
            }
        }
    }

    /// 403 unless `caller`'s token covers `service`; runs before any write.
    fn authorize(&self, caller: &Caller, service: &str, op: &str) -> Result<(), ApiError> {
        let scope = caller
            .credential
            .and_then(|i| self.credentials.get(i))
            .and_then(|c| c.scope.as_ref());
        match scope {
            Some(s) if !s.covers(service) => {
                self.rejections.forbidden.fetch_add(1, Ordering::Relaxed);
                warn!(
                    service,
                    op,
                    peer = %caller.peer.map_or("-".to_owned(), |p| p.to_string()),
                    "Registration call rejected: the token does not cover this service."
                );
                Err(ApiError::Forbidden {
                    service: service.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Read-your-writes: the registry published the change before
    /// answering; this waits until this gateway's routing has applied it, so
    /// a caller that registered can be routed to at once, and one that
    /// deregistered is not routed to any more (then it may stop serving).
    /// Bounded, in case a registry publishes nothing for the change.
    async fn routing_caught_up(&self) {
        if let Some(b) = &self.balancer {
            let version = self.registry.watch().borrow().version;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), b.wait_applied(version))
                    .await;
        }
    }

    /// Validates, authorises and stores a registration.
    pub async fn register(
        &self,
        caller: &Caller,
        reg: pb::Registration,
    ) -> Result<pb::RegisterResponse, ApiError> {
        let accepted = Instant::now();
        let reg = Registration::from_proto(reg, &self.policy)?;
        self.authorize(caller, &reg.service, "register")?;
        let (service, address) = (reg.service.clone(), reg.address.clone());
        let out = self.registry.register(reg).await?;
        self.routing_caught_up().await;
        if let Some(b) = &self.balancer
            && b.routable_since(&service, &out.instance_id).is_some()
        {
            // Not observed when the routing did not catch up within its bound
            // or the instance is failing: it is not routable yet.
            b.metrics().discovery.propagated(
                crate::metrics::Origin::Local,
                accepted.elapsed().as_secs_f64(),
            );
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

    /// Removes an instance (idempotent). The registry keys instances by
    /// (service, instance id), so the service named is the instance's own.
    pub async fn deregister(
        &self,
        caller: &Caller,
        service: &str,
        instance_id: &str,
    ) -> Result<pb::DeregisterResponse, ApiError> {
        key_fields(service, instance_id)?;
        self.authorize(caller, service, "deregister")?;
        let existed = self.registry.deregister(service, instance_id).await?;
        self.routing_caught_up().await;
        if existed {
            info!(service, instance = instance_id, "Instance deregistered.");
        }
        Ok(pb::DeregisterResponse { existed })
    }

    /// Extends a lease.
    pub async fn renew(
        &self,
        caller: &Caller,
        service: &str,
        instance_id: &str,
    ) -> Result<pb::RenewResponse, ApiError> {
        key_fields(service, instance_id)?;
        self.authorize(caller, service, "renew")?;
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

fn peer_of<T>(req: &tonic::Request<T>) -> Option<SocketAddr> {
    req.extensions().get::<PeerAddr>().map(|p| p.0)
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistrationApi {
    async fn register(
        &self,
        req: tonic::Request<pb::RegisterRequest>,
    ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
        let service = req
            .get_ref()
            .registration
            .as_ref()
            .map(|r| r.service.as_str());
        let caller = self.authenticate(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            peer_of(&req),
            service,
        )?;
        let reg = req.into_inner().registration.ok_or_else(|| {
            ApiError::Invalid(InvalidField {
                field: "registration".into(),
                reason: "is required".into(),
            })
        })?;
        Ok(tonic::Response::new(
            RegistrationApi::register(self, &caller, reg).await?,
        ))
    }

    async fn deregister(
        &self,
        req: tonic::Request<pb::DeregisterRequest>,
    ) -> Result<tonic::Response<pb::DeregisterResponse>, tonic::Status> {
        let caller = self.authenticate(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            peer_of(&req),
            Some(&req.get_ref().service),
        )?;
        let r = req.into_inner();
        Ok(tonic::Response::new(
            RegistrationApi::deregister(self, &caller, &r.service, &r.instance_id).await?,
        ))
    }

    async fn renew(
        &self,
        req: tonic::Request<pb::RenewRequest>,
    ) -> Result<tonic::Response<pb::RenewResponse>, tonic::Status> {
        let caller = self.authenticate(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            peer_of(&req),
            Some(&req.get_ref().service),
        )?;
        let r = req.into_inner();
        Ok(tonic::Response::new(
            RegistrationApi::renew(self, &caller, &r.service, &r.instance_id).await?,
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
pub(crate) struct RegistrationJson {
    /// Service name.
    pub service: String,
    /// Instance id ("" = derived).
    pub instance_id: String,
    /// host:port.
    pub address: String,
    /// Routes.
    #[serde(deserialize_with = "objects")]
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
    #[serde(deserialize_with = "optional_object")]
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
pub(crate) struct RouteJson {
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
    /// The backend sees the path without the prefix (a hint).
    pub strip_prefix: bool,
}

/// JSON form of a health check.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HealthJson {
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

/// Deserialises `T` from a JSON object only. serde's derived structs also
/// take an array of their fields in order, which would let
/// `["svc","svc-1","127.0.0.1:9000"]` pass for a registration.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnlyMaps<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OnlyMaps<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(OnlyMaps(std::marker::PhantomData))
            .map(Object)
    }
}

fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Vec::<Object<T>>::deserialize(d).map(|v| v.into_iter().map(|o| o.0).collect())
}

fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Object<T>>::deserialize(d).map(|o| o.map(|o| o.0))
}

/// serde's words for JSON types, in the words of the OpenAPI document.
const PLAIN_WORDS: &[(&str, &str)] = &[
    ("expected u32", "expected an integer from 0 to 4294967295"),
    (
        "expected u64",
        "expected an integer from 0 to 18446744073709551615",
    ),
    ("expected a sequence", "expected an array"),
    ("expected a map", "expected an object"),
    ("invalid type: sequence", "invalid type: array"),
    ("invalid type: map", "invalid type: object"),
    ("floating point `", "number `"),
];

/// Parses a JSON registration. Malformed JSON is `invalid_json`; a value of
/// the wrong shape (a non-object, a wrong type, a number out of range, an
/// unknown or duplicate field) is `invalid_field` naming the field, e.g.
/// `registration.routes[0].prefix`.
pub(crate) fn parse_registration(body: &[u8]) -> Result<RegistrationJson, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let e = match serde_path_to_error::deserialize::<_, Object<RegistrationJson>>(&mut de) {
        Ok(r) => {
            // Trailing characters after the object.
            de.end().map_err(|e| ApiError::Json(e.to_string()))?;
            return Ok(r.0);
        }
        Err(e) => e,
    };
    let inner = e.inner();
    if inner.classify() != serde_json::error::Category::Data {
        return Err(ApiError::Json(inner.to_string()));
    }
    // serde_json ends with the position; the field path says more.
    let full = inner.to_string();
    let position = format!(" at line {} column {}", inner.line(), inner.column());
    let mut reason = full.strip_suffix(&position).unwrap_or(&full).to_owned();
    for (serde, plain) in PLAIN_WORDS {
        reason = reason.replace(serde, plain);
    }
    let path = e.path().to_string();
    let field = if path == "." {
        "registration".to_owned()
    } else {
        format!("registration.{path}")
    };
    Err(ApiError::Invalid(InvalidField { field, reason }))
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
                    strip_prefix: r.strip_prefix,
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
pub(crate) fn registration_to_json(r: &pb::Registration) -> serde_json::Value {
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
        "routes": r.routes.iter().map(|rt| json!({"path_prefix": rt.path_prefix, "hosts": rt.hosts, "timeout_ms": rt.timeout_ms, "stream": rt.stream, "max_duration_ms": rt.max_duration_ms, "strip_prefix": rt.strip_prefix})).collect::<Vec<_>>(),
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
pub(crate) fn list_to_json(l: &pb::ListResponse) -> serde_json::Value {
    json!({
        "instances": l.instances.iter().map(|i| json!({
            "registration": i.registration.as_ref().map(registration_to_json),
            "health": health_name(i.health),
            "health_detail": i.health_detail,
            "lease_remaining_ms": i.lease_remaining_ms,
        })).collect::<Vec<_>>()
    })
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())
}

/// A body refused for its declared length is still read and dropped, up to
/// this much and for at most [`DRAIN_TIME`], before the 413 is sent: a
/// client that sends its body without `Expect: 100-continue` is otherwise
/// still writing when the connection closes with its bytes unread, and the
/// kernel's reset reaches it before the answer (a lingering close).
const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// See [`DRAIN_BYTES`].
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a body up to [`MAX_HTTP_BODY_BYTES`]; a declared length over it is
/// refused without keeping anything (drained first when at most
/// [`DRAIN_BYTES`]).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = ApiError::TooLarge {
        limit: MAX_HTTP_BODY_BYTES,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > MAX_HTTP_BODY_BYTES as u64) {
        if n <= DRAIN_BYTES {
            let mut body = body;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
            })
            .await;
        }
        return Err(too_large);
    }
    axum::body::to_bytes(body, MAX_HTTP_BODY_BYTES)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            if e.is::<http_body_util::LengthLimitError>() {
                too_large
            } else {
                ApiError::Json(format!("reading the body failed: {e}"))
            }
        })
}

async fn http_register(
    State(api): State<RegistrationApi>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The token is checked before the body is read; its scope once the
    // body names the service.
    let caller = api.authenticate(authorization(&headers), peer.map(|p| p.0.0), None)?;
    let body = read_body(&headers, body).await?;
    let json = parse_registration(&body)?;
    let out = api.register(&caller, json.into_proto()?).await?;
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
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = api.authenticate(authorization(&headers), peer.map(|p| p.0.0), Some(&service))?;
    let out = api.deregister(&caller, &service, &id).await?;
    Ok(axum::Json(json!({"existed": out.existed})).into_response())
}

async fn http_renew(
    State(api): State<RegistrationApi>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = api.authenticate(authorization(&headers), peer.map(|p| p.0.0), Some(&service))?;
    let out = api.renew(&caller, &service, &id).await?;
    Ok(axum::Json(json!({"lease_ms": out.lease_ms})).into_response())
}

/// gRPC's status for a message over the size limit is RESOURCE_EXHAUSTED
/// (the status-code guide); tonic's decoder answers OUT_OF_RANGE. None of
/// this API's own answers is OUT_OF_RANGE, so any is the decoder's.
fn size_limit_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    const OUT_OF_RANGE: &str = "11";
    const RESOURCE_EXHAUSTED: &str = "8";
    if resp
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s == OUT_OF_RANGE)
    {
        resp.headers_mut().insert(
            "grpc-status",
            header::HeaderValue::from_static(RESOURCE_EXHAUSTED),
        );
    }
    resp
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
    let grpc = pb::registry_service_server::RegistryServiceServer::new(api.clone())
        .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let grpc = tower::ServiceBuilder::new()
        .map_response(size_limit_status)
        .service(grpc);
    Router::new()
        .route_service("/forwarding.v1.RegistryService/{*method}", grpc)
        .route("/v1/registrations", put(http_register).post(http_register).get(http_list))
        .route("/v1/registrations/{service}/{instance_id}", axum::routing::delete(http_deregister))
        .route("/v1/registrations/{service}/{instance_id}/renew", post(http_renew))
        .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
        .merge(docs())
        .with_state(api)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": {"code": "not_found", "message": "unknown registration API path"}})),
            )
        })
}

/// Where the registration listener serves Swagger UI (feature
/// `swagger-ui`, on by default): `/docs` redirects to `/docs/`, the page.
pub const DOCS_PATH: &str = "/docs";

/// Swagger UI at [`DOCS_PATH`], showing `/openapi.yaml` (the one document,
/// [`OPENAPI`]). Its HTML, JavaScript and CSS are compiled into the binary
/// (`utoipa-swagger-ui`'s `vendored` feature), so the page needs no network:
/// the online validator badge, Swagger UI's one outside call, is off.
#[cfg(feature = "swagger-ui")]
fn docs<S: Clone + Send + Sync + 'static>() -> Router<S> {
    use utoipa_swagger_ui::{Config, SwaggerUi};
    let config = Config::from("/openapi.yaml")
        .validator_url("none")
        .try_it_out_enabled(true);
    SwaggerUi::new(DOCS_PATH).config(config).into()
}

/// Without the `swagger-ui` feature `/docs` is an unknown path (404).
#[cfg(not(feature = "swagger-ui"))]
fn docs<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}

/// The OpenAPI document of the HTTP/JSON registration API.
pub const OPENAPI: &str = include_str!("../../openapi/registry.v1.yaml");

#[cfg(test)]
mod tests;
