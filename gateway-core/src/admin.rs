//! The admin listener: liveness, readiness, a JSON view of services,
//! instances and their health, `/admin/explain` (how a request would be
//! routed), the web UI at `/` with its live feed `/admin/events` (events
//! and log lines, [`LogFeed`]), every replica's view side by side
//! (`/admin/replicas`, `[admin] peers`); every other path is forwarded with admin visibility (so `admin` services are
//! reachable here and nowhere else).

pub mod events;
mod logs;
pub(crate) mod replicas;

pub use logs::{FeedFilter, FeedLayer, LogFeed, REQUEST_SPAN_TARGET};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::balance::Ejection;
use crate::proxy::HttpService;
use crate::registration::{RegistrationApi, list_to_json};
use crate::shared::Shared;

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
    hub: Arc<events::EventHub>,
    peers: Arc<crate::config::AdminConfig>,
    #[cfg(feature = "consul")]
    consul: Option<Arc<replicas::consul::ConsulPeers>>,
}

/// What the admin router needs besides the gateway: the other replicas and
/// the log feed, both optional.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    /// `[admin]`: peers and their timeout.
    pub config: crate::config::AdminConfig,
    /// Log lines for the UI's pane (the binary installs its layer).
    pub logs: Option<LogFeed>,
    /// Peers found through Consul's KV store (see `admin/replicas.rs`).
    #[cfg(feature = "consul")]
    pub(crate) consul: Option<Arc<replicas::consul::ConsulPeers>>,
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

/// Filters and paging of `/admin/services`, all optional: without them the
/// whole view (every service, every registered instance) is returned.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ServicesQuery {
    /// Only this service.
    service: Option<String>,
    /// Only services whose name starts with this.
    prefix: Option<String>,
    /// At most this many services (sorted by name), from `offset`.
    limit: Option<usize>,
    /// Skip this many services.
    offset: usize,
    /// Include the registry's instance listing (default true); `false`
    /// keeps the answer small at thousands of instances.
    instances: Option<bool>,
}

async fn services(
    State(s): State<AdminState>,
    query: Result<axum::extract::Query<ServicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": {"code": "bad_request", "message": e.body_text()}})),
            )
                .into_response();
        }
    };
    axum::Json(view(&s, &q)).into_response()
}

/// The `/admin/services` view (also the UI's `state`).
fn view(s: &AdminState, q: &ServicesQuery) -> serde_json::Value {
    let snap = s.shared.balancer.snapshot();
    let mut names: Vec<&Arc<str>> = snap
        .services
        .keys()
        .filter(|n| q.service.as_deref().is_none_or(|w| &***n == w))
        .filter(|n| q.prefix.as_deref().is_none_or(|p| n.starts_with(p)))
        .collect();
    names.sort();
    let total = names.len();
    let end = q
        .limit
        .map_or(total, |l| q.offset.saturating_add(l).min(total));
    let page = names.get(q.offset.min(total)..end).unwrap_or_default();
    let services: Vec<_> = page
        .iter()
        .map(|name| {
            let eps = &snap.services[*name];
            let endpoints: Vec<_> = eps
                .endpoints
                .iter()
                .map(|e| {
                    let st = s.shared.balancer.stats(e);
                    json!({
                        "instance_id": &*e.instance_id,
                        "address": &*e.address,
                        "weight": e.weight,
                        "streaming": e.streaming,
                        "in_flight": e.in_flight(),
                        "connections": e.pool().open_connections(),
                        "requests": st.requests,
                        "connect_failures": st.connect_failures,
                        "failures": st.failures,
                        "ejected": st.ejection.is_some(),
                        "ejection": st.ejection.map(|j| match j {
                            Ejection::Unreachable => "unreachable",
                            Ejection::Failing => "failing",
                        }),
                        "ejected_for_ms": st.ejected_for_ms,
                        "latency_ms": st.latency_ms.map(|ms| (ms * 1000.0).round() / 1000.0),
                    })
                })
                .collect();
            let health = s.shared.balancer.health(eps);
            json!({
                "name": &***name,
                "registered_instances": eps.registered,
                "routable_instances": endpoints.len(),
                "panic": health.panic,
                "retries": eps.budget.retries(),
                "retry_budget_exhausted": eps.budget.exhausted(),
                "endpoints": endpoints,
            })
        })
        .collect();
    let mut out = json!({
        "node_id": &*s.shared.node_id,
        "ready": s.readiness.is_ready(),
        "registry": s.shared.registry.status(),
        "snapshot_version": snap.version,
        "routes": snap.routes.len(),
        "total_services": total,
        "services": services,
        "registration": registration_counters(&s.api),
    });
    if end < total {
        out["next_offset"] = json!(end);
    }
    if q.instances.unwrap_or(true) {
        let service = q.service.as_deref().unwrap_or("");
        out["instances"] = list_to_json(&s.api.list(service))["instances"].take();
    }
    out
}

/// What the UI shows: the whole view plus every route.
fn ui_state(s: &AdminState) -> serde_json::Value {
    let mut out = view(s, &ServicesQuery::default());
    let snap = s.shared.balancer.snapshot();
    let mut routes: Vec<_> = snap.routes.iter().collect();
    routes.sort_by(|a, b| (&a.prefix, &a.service).cmp(&(&b.prefix, &b.service)));
    out["route_list"] = routes
        .into_iter()
        .map(|r| {
            json!({"service": &*r.service, "prefix": &*r.prefix, "hosts": r.hosts(),
                "visibility": r.visibility, "stream": r.stream})
        })
        .collect();
    out["at_ms"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    );
    out
}

/// `GET /admin/explain?method=&host=&path=[&listener=&websocket=&accept=]`.
async fn explain(
    State(s): State<AdminState>,
    query: Result<
        axum::extract::Query<crate::explain::ExplainQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let result = match query {
        Ok(axum::extract::Query(q)) => crate::explain::explain(&s.shared, &q),
        Err(e) => Err(crate::explain::BadParameter {
            parameter: "query",
            message: e.body_text(),
        }),
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(e.to_json())).into_response(),
    }
}

/// The admin URLs of every replica, this one among them: `[admin] peers`
/// and, with `[consul]`, those announced in Consul's KV store, each once;
/// and how they were found (`{"static": n, "consul": n}`).
async fn peer_urls(s: &AdminState) -> (Vec<String>, serde_json::Value) {
    let mut urls: Vec<String> = s.peers.peers.clone();
    #[cfg_attr(not(feature = "consul"), allow(unused_mut))]
    let mut discovery = json!({"static": urls.len()});
    #[cfg(feature = "consul")]
    if let Some(consul) = &s.consul {
        match consul.list().await {
            Ok(found) => {
                discovery["consul"] = json!(found.len());
                urls.extend(found);
            }
            Err(e) => discovery["consul_error"] = json!(e),
        }
    }
    // A URL in both the list and Consul is one peer.
    let mut seen = std::collections::HashSet::new();
    urls.retain(|u| seen.insert(u.trim_end_matches('/').to_owned()));
    (urls, discovery)
}

/// `GET /admin/replicas`: this replica's view and every peer's, fetched
/// now (see `admin/replicas.rs`).
async fn replicas(State(s): State<AdminState>) -> Response {
    let me = json!({"url": null, "up": true, "self": true, "latency_ms": 0.0,
        "view": view(&s, &ServicesQuery::default())});
    let (urls, discovery) = peer_urls(&s).await;
    let fetches = urls
        .iter()
        .map(|url| replicas::fetch(url, s.peers.peer_timeout));
    let mut out = vec![me];
    for mut r in futures_util::future::join_all(fetches).await {
        // The list is the same on every replica: this one is in it.
        if r["view"]["node_id"].as_str() == Some(&*s.shared.node_id) {
            out[0]["url"] = r["url"].take();
            continue;
        }
        out.push(r);
    }
    axum::Json(json!({"node_id": &*s.shared.node_id, "discovery": discovery, "replicas": out}))
        .into_response()
}

async fn event_stream(State(s): State<AdminState>) -> Response {
    let st = s.clone();
    events::stream(s.hub.clone(), s.shared.clone(), move || ui_state(&st)).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui_index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("admin/ui/index.html"),
    )
}

async fn ui_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("admin/ui/admin.css"),
    )
}

async fn ui_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("admin/ui/admin.js"),
    )
}

/// Prometheus metrics (crate::metrics), as OpenMetrics text.
async fn metrics(State(s): State<AdminState>) -> Response {
    let balancer = &s.shared.balancer;
    let text = balancer.metrics().encode(
        balancer.open_connections() as i64,
        &s.shared.registry.status(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /admin/canary`: every `[[canary]]` policy with its weights in force.
async fn canary_list(State(s): State<AdminState>) -> Response {
    let snap = s.shared.balancer.snapshot();
    match &s.shared.canary {
        Some(c) => axum::Json(c.to_json(&snap)).into_response(),
        None => axum::Json(json!({"canary": []})).into_response(),
    }
}

/// `?replicas=all` on `PUT /admin/canary/<service>`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryPutQuery {
    replicas: Option<String>,
}

/// `PUT /admin/canary/<service>` with `{"weights": {"v1": 50, "v2": 50}}`:
/// changes this replica's weights (see `canary.rs`). With `?replicas=all`,
/// then every peer's (see [`peer_urls`]), each with the same body within
/// `[admin] peer_timeout`: `200` when every replica took them, else `502
/// replicas_incomplete`; `replicas` lists each one's outcome either way.
async fn canary_put(
    State(s): State<AdminState>,
    axum::extract::Path(service): axum::extract::Path<String>,
    query: Result<axum::extract::Query<CanaryPutQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let error = |status: StatusCode, code: &str, message: String| {
        (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response()
    };
    let all = match query.as_ref().map(|q| q.replicas.as_deref()) {
        Ok(None) => false,
        Ok(Some("all")) => true,
        Ok(Some(other)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("replicas: {other:?} is not \"all\" (leave it out for this replica only)"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let result = match &s.shared.canary {
        Some(c) => c.put_weights(&service, &body),
        None => Err((
            StatusCode::NOT_FOUND,
            "not_found",
            format!("service {service:?} has no [[canary]] policy"),
        )),
    };
    let mut v = match result {
        Ok(v) => v,
        Err((status, code, message)) => return error(status, code, message),
    };
    v["node_id"] = json!(&*s.shared.node_id);
    if !all {
        return axum::Json(v).into_response();
    }
    let (urls, _) = peer_urls(&s).await;
    let puts = urls
        .iter()
        .map(|url| replicas::put_canary(url, &service, body.clone(), s.peers.peer_timeout));
    let mut out =
        vec![json!({"url": null, "self": true, "node_id": &*s.shared.node_id, "ok": true})];
    let mut failed = Vec::new();
    for (url, r) in urls.iter().zip(futures_util::future::join_all(puts).await) {
        match r {
            Ok((status, answer)) if status.is_success() => {
                // The list is the same on every replica: this one is in it
                // (and took the same weights again).
                if answer["node_id"].as_str() == Some(&*s.shared.node_id) {
                    out[0]["url"] = json!(url);
                    continue;
                }
                out.push(json!({"url": url, "node_id": answer["node_id"], "ok": true}));
            }
            Ok((status, answer)) => {
                let why = answer["error"]["message"].as_str().map_or_else(
                    || format!("answered {status}"),
                    |m| format!("answered {status}: {m}"),
                );
                failed.push(format!("{url}: {why}"));
                out.push(json!({"url": url, "ok": false, "error": why}));
            }
            Err(why) => {
                failed.push(format!("{url}: {why}"));
                out.push(json!({"url": url, "ok": false, "error": why}));
            }
        }
    }
    v["replicas"] = json!(out);
    if failed.is_empty() {
        return axum::Json(v).into_response();
    }
    v["error"] = json!({
        "code": "replicas_incomplete",
        "message": format!(
            "weights applied on {} of {} replicas; not on {}",
            out.len() - failed.len(),
            out.len(),
            failed.join("; ")
        ),
    });
    (StatusCode::BAD_GATEWAY, axum::Json(v)).into_response()
}

/// Rejected registration calls since start (a client with a wrong or
/// out-of-scope token shows up here as well as in the log).
fn registration_counters(api: &RegistrationApi) -> serde_json::Value {
    let r = api.rejections();
    json!({"rejected": {
        "unauthenticated": r.unauthenticated.load(Ordering::Relaxed),
        "forbidden": r.forbidden.load(Ordering::Relaxed),
    }})
}

/// The admin router; unknown paths go to `fallback` (the admin proxy stack).
pub fn router(
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
    fallback: HttpService<axum::body::Body>,
    options: AdminOptions,
) -> Router {
    let hub = events::EventHub::start(shared.clone(), options.logs);
    Router::new()
        .route("/", get(ui_index))
        .route("/admin/ui/admin.css", get(ui_css))
        .route("/admin/ui/admin.js", get(ui_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/services", get(services))
        .route("/admin/explain", get(explain))
        .route("/admin/events", get(event_stream))
        .route("/admin/replicas", get(replicas))
        .route("/metrics", get(metrics))
        .route("/admin/canary", get(canary_list))
        .route("/admin/canary/{service}", axum::routing::put(canary_put))
        .with_state(AdminState {
            shared,
            readiness,
            api,
            hub,
            peers: Arc::new(options.config),
            #[cfg(feature = "consul")]
            consul: options.consul,
        })
        .fallback_service(fallback)
}
