//! The admin listener: liveness, readiness, a JSON view of services,
//! instances and their health; every other path is forwarded with admin
//! visibility (so `admin` services are reachable here and nowhere else).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::balance::Balancer;
use crate::forward::Shared;
use crate::proxy::HttpService;
use crate::registration::{RegistrationApi, list_to_json};

/// Readiness of the gateway: false while starting and once draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Whether the gateway takes traffic.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.readiness.is_ready() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready"})),
        )
            .into_response()
    }
}

async fn services(State(s): State<AdminState>) -> Response {
    let snap = s.shared.balancer.snapshot();
    let mut services: Vec<_> = snap
        .services
        .iter()
        .map(|(name, eps)| {
            let endpoints: Vec<_> = eps
                .endpoints
                .iter()
                .map(|e| {
                    let (requests, failures) = Balancer::counters(e);
                    json!({
                        "instance_id": &*e.instance_id,
                        "address": &*e.address,
                        "weight": e.weight,
                        "in_flight": e.in_flight(),
                        "requests": requests,
                        "connect_failures": failures,
                        "ejected": s.shared.balancer.is_ejected(e),
                    })
                })
                .collect();
            json!({
                "name": &**name,
                "registered_instances": eps.registered,
                "routable_instances": endpoints.len(),
                "endpoints": endpoints,
            })
        })
        .collect();
    services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    axum::Json(json!({
        "node_id": &*s.shared.node_id,
        "ready": s.readiness.is_ready(),
        "registry": s.shared.registry.status(),
        "snapshot_version": snap.version,
        "routes": snap.routes.len(),
        "services": services,
        "instances": list_to_json(&s.api.list(""))["instances"],
    }))
    .into_response()
}

/// The admin router; unknown paths go to `fallback` (the admin proxy stack).
pub fn router(
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
    fallback: HttpService<axum::body::Body>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/services", get(services))
        .with_state(AdminState {
            shared,
            readiness,
            api,
        })
        .fallback_service(fallback)
}
