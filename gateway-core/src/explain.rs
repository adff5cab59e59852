//! `GET /admin/explain`: what the gateway would do with a request, and why.
//!
//! Every decision is taken by the functions the request path calls
//! (`forward::matched_route`, `Target::of`, [`Balancer::explain`] - which
//! shares its gate with [`Balancer::select`] - and `forward::choose`), on
//! the same snapshot, so the explanation cannot drift from what a request
//! gets. Nothing is selected: no retry budget is deposited, no instance is
//! dialled.
//!
//! [`Balancer::explain`]: crate::balance::Balancer::explain
//! [`Balancer::select`]: crate::balance::Balancer::select

use bytes::Bytes;
use http::header;
use serde_json::{Value, json};

use crate::balance::Ejection;
use crate::error::ErrorKind;
use crate::forward::{self, Dispatch, Target};
use crate::registry::Health;
use crate::routing::{Listener, Route, normalise};
use crate::shared::Shared;

/// The query of `/admin/explain`; `path` is required.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplainQuery {
    /// HTTP method (default GET).
    pub method: Option<String>,
    /// `Host` (`host[:port]`); empty = none.
    pub host: Option<String>,
    /// Request target path (and query), starting with '/'.
    pub path: Option<String>,
    /// `public` (default), `internal` or `admin`.
    pub listener: Option<String>,
    /// The request is a WebSocket upgrade.
    pub websocket: Option<bool>,
    /// The request's `Accept` (e.g. `text/event-stream`).
    pub accept: Option<String>,
}

/// A parameter that is missing or malformed: answered 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParameter {
    /// The query parameter.
    pub parameter: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl BadParameter {
    fn new(parameter: &'static str, message: impl Into<String>) -> Self {
        Self {
            parameter,
            message: message.into(),
        }
    }

    /// The gateway's JSON error body, with the parameter named.
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "code": ErrorKind::BadRequest.code(),
            "message": self.message,
            "parameter": self.parameter,
            "request_id": null,
        }})
    }
}

fn listener_name(l: Listener) -> &'static str {
    match l {
        Listener::Public => "public",
        Listener::Internal => "internal",
        Listener::Admin => "admin",
    }
}

fn dispatch_name(d: Dispatch) -> &'static str {
    match d {
        Dispatch::Unary => "Send",
        Dispatch::Stream | Dispatch::WebSocket => "Stream",
    }
}

fn route_json(r: &Route) -> Value {
    json!({
        "service": &*r.service,
        "prefix": &*r.prefix,
        "hosts": r.hosts(),
        "visibility": r.visibility,
        "stream": r.stream,
        "timeout_ms": r.timeout.map(|t| t.as_millis() as u64),
        "max_duration_ms": r.max_duration.map(|t| t.as_millis() as u64),
        "strip_prefix": r.strip_prefix,
    })
}

/// Why `other` lost to `won` (both match the request).
fn lost_because(other: &Route, won: Option<&Route>, listener: Listener) -> String {
    if !listener.allows(other.visibility) {
        return format!(
            "not visible on the {} listener (visibility {})",
            listener_name(listener),
            json!(other.visibility).as_str().unwrap_or("?")
        );
    }
    let Some(won) = won else {
        return "not chosen".into();
    };
    if !won.hosts().is_empty() && other.hosts().is_empty() {
        "any host: a route naming the request's host wins first".into()
    } else if segments_of(won) != segments_of(other) {
        format!(
            "shorter prefix {} than {} (the longest prefix wins)",
            other.prefix, won.prefix
        )
    } else {
        "same host rule and prefix length: the service name that sorts first wins".into()
    }
}

/// Explains a request; `Err` names a bad parameter.
pub fn explain(shared: &Shared, q: &ExplainQuery) -> Result<Value, BadParameter> {
    let method = http::Method::from_bytes(q.method.as_deref().unwrap_or("GET").as_bytes())
        .map_err(|_| BadParameter::new("method", "method is not an HTTP method token"))?;
    let listener = match q.listener.as_deref().unwrap_or("public") {
        "public" => Listener::Public,
        "internal" => Listener::Internal,
        "admin" => Listener::Admin,
        _ => {
            return Err(BadParameter::new(
                "listener",
                "listener must be public, internal or admin",
            ));
        }
    };
    let host = q.host.as_deref().unwrap_or("");
    if !forward::valid_host(host.as_bytes()) {
        return Err(BadParameter::new("host", "host is not a valid host[:port]"));
    }
    let path = q
        .path
        .as_deref()
        .ok_or_else(|| BadParameter::new("path", "path is required"))?;
    let target: http::uri::PathAndQuery = path
        .parse()
        .map_err(|_| BadParameter::new("path", "path is not a valid request target"))?;
    if !path.starts_with('/') {
        return Err(BadParameter::new("path", "path must start with '/'"));
    }
    let segments =
        normalise(target.path()).map_err(|e| BadParameter::new("path", e.message.to_string()))?;
    // The request as the request path would see it (an empty body).
    let mut req = http::Request::builder()
        .method(method.clone())
        .uri(target.clone())
        .version(http::Version::HTTP_11);
    if !host.is_empty() {
        req = req.header(header::HOST, host);
    }
    let websocket = q.websocket.unwrap_or(false);
    if websocket {
        req = req
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13");
    }
    if let Some(a) = &q.accept {
        req = req.header(header::ACCEPT, a.as_str());
    }
    let body = http_body_util::Empty::<Bytes>::new();
    let (parts, body) = req
        .body(body)
        .map_err(|e| BadParameter::new("accept", e.to_string()))?
        .into_parts();
    let authority = crate::convert::authority(&parts)
        .map_err(|e| BadParameter::new("host", e.message.to_string()))?;

    let snapshot = shared.balancer.snapshot();
    let matching = snapshot.routes.matching(authority, &segments);
    let per_listener: serde_json::Map<String, Value> =
        [Listener::Public, Listener::Internal, Listener::Admin]
            .into_iter()
            .map(|l| {
                let r = forward::matched_route(&snapshot, l, authority, target.path()).ok();
                (
                    listener_name(l).to_owned(),
                    r.map_or(
                        Value::Null,
                        |r| json!({"service": &*r.service, "prefix": &*r.prefix}),
                    ),
                )
            })
            .collect();
    let mut out = json!({
        "request": {
            "method": method.as_str(),
            "host": host,
            "path": path,
            "listener": listener_name(listener),
            "websocket": websocket,
            "accept": q.accept,
        },
        "normalised_path": crate::routing::canonical(&segments),
        "snapshot_version": snapshot.version,
        "route": null,
        "visible_from": per_listener,
        "service": null,
        "candidates": [],
        "excluded": [],
        "dispatch": null,
    });
    let chosen = forward::matched_route(&snapshot, listener, authority, target.path());
    let won = chosen.as_ref().ok().copied();
    out["other_matching_routes"] = matching
        .iter()
        .filter(|r| won.is_none_or(|w| !std::ptr::eq(**r, w)))
        .map(|r| {
            let mut j = route_json(r);
            j["lost_because"] = json!(lost_because(r, won, listener));
            j
        })
        .collect();
    let route = match chosen {
        Ok(r) => r,
        Err(e) => {
            out["outcome"] = outcome(e.kind, &e.message);
            return Ok(out);
        }
    };
    let mut rj = route_json(route);
    rj["why"] = json!(if route.hosts().is_empty() {
        format!(
            "matches any host; longest matching prefix visible on the {} listener ({} segment(s))",
            listener_name(listener),
            segments_of(route)
        )
    } else {
        format!(
            "names the request's host {}: host-specific routes beat routes for any host; longest such prefix ({} segment(s))",
            crate::routing::strip_port(authority).to_ascii_lowercase(),
            segments_of(route)
        )
    });
    out["route"] = rj;
    let mut target = Target::of(shared, route);
    // `[[routes]]`: the rule, the path the backend would get, the limits.
    out["route"]["rule"] =
        crate::route_rules::explain(shared.route_rules.as_deref(), &parts, &mut target);
    // The policy sections covering it (`null`: none), chosen as the
    // request path chooses them.
    let (service, prefix) = (&*target.service, &*target.prefix);
    out["route"]["policies"] = json!({
        "auth": shared.auth.as_ref().map(|a| a.explain(&target, &parts)),
        "rate_limit": shared.rate_limits.as_ref().map(|r| r.explain(service, prefix, &parts)),
        "cache": shared.cache.as_ref().map(|c| c.explain(service, prefix, &parts)),
        "canary": shared.canary.as_ref().and_then(|c| c.get(service)).map(|c| c.to_json(&snapshot)),
    });
    out["route"]["effective_timeout_ms"] = json!(target.timeout.as_millis() as u64);
    out["route"]["effective_max_duration_ms"] = json!(target.max_duration.as_millis() as u64);

    // Instances failing health checks are not in the snapshot: the
    // catalogue names them.
    let catalog = shared.registry.watch().borrow().clone();
    let mut excluded: Vec<Value> = Vec::new();
    let mut health_of = std::collections::HashMap::new();
    for inst in catalog
        .instances
        .iter()
        .filter(|i| *i.registration.service == *target.service)
    {
        health_of.insert(inst.registration.instance_id.as_str(), inst.health);
        if !inst.health.routable() {
            excluded.push(json!({
                "instance_id": inst.registration.instance_id,
                "address": inst.registration.address,
                "reason": "health",
                "detail": format!("health check failing: {}", inst.detail),
            }));
        }
    }
    let Some(eps) = snapshot.services.get(&target.service) else {
        out["excluded"] = json!(excluded);
        let e = forward::no_endpoint_error(&target.service, None);
        out["outcome"] = outcome(e.kind, &e.message);
        return Ok(out);
    };
    let sel = shared.balancer.explain(eps);
    out["service"] = json!({
        "name": &*target.service,
        "registered_instances": eps.registered,
        "routable_instances": eps.endpoints.len(),
        "unreachable": sel.health.unreachable,
        "failing": sel.health.failing,
        "panic": sel.health.panic,
    });
    let mut candidates = Vec::new();
    let mut dispatches = Vec::new();
    for (ep, candidate, st) in &sel.endpoints {
        let ejection = st.ejection.map(|j| match j {
            Ejection::Unreachable => "unreachable",
            Ejection::Failing => "failing",
        });
        let health = health_of
            .get(&*ep.instance_id)
            .copied()
            .unwrap_or(Health::Unknown);
        if !candidate {
            let detail = match st.ejection {
                Some(Ejection::Unreachable) => format!(
                    "ejected: refused a connection; {} ms left (probed every {} ms)",
                    st.ejected_for_ms,
                    crate::balance::PROBE_INTERVAL.as_millis()
                ),
                Some(Ejection::Failing) => format!(
                    "ejected: its calls failed in a row; {} ms left",
                    st.ejected_for_ms
                ),
                None => "not offered by selection".into(),
            };
            excluded.push(json!({
                "instance_id": &*ep.instance_id,
                "address": &*ep.address,
                "reason": "ejected",
                "ejection": ejection,
                "ejected_for_ms": st.ejected_for_ms,
                "detail": detail,
            }));
            continue;
        }
        if websocket && !ep.streaming {
            excluded.push(json!({
                "instance_id": &*ep.instance_id,
                "address": &*ep.address,
                "reason": "not_streaming",
                "detail": "a WebSocket needs `Stream`; the instance does not declare `streaming`",
            }));
            continue;
        }
        let d = forward::choose(shared, &parts, &body, &target, ep);
        dispatches.push(d);
        let mut c = json!({
            "instance_id": &*ep.instance_id,
            "address": &*ep.address,
            "health": health,
            "weight": ep.weight,
            "streaming": ep.streaming,
            "in_flight": ep.in_flight(),
            "latency_ms": st.latency_ms,
            "dispatch": dispatch_name(d),
        });
        if let Some(j) = ejection {
            c["ejection"] = json!(j);
            c["detail"] = json!(format!(
                "ejected ({j}) but offered: panic mode, more than max_ejection_percent of the service is ejected"
            ));
        }
        candidates.push(c);
    }
    out["candidates"] = json!(candidates);
    out["excluded"] = json!(excluded);
    match sel.outcome {
        Err(why) => {
            let e = forward::no_endpoint_error(&target.service, Some(why));
            out["outcome"] = outcome(e.kind, &e.message);
        }
        Ok(()) if websocket && dispatches.is_empty() => {
            out["outcome"] = outcome(
                ErrorKind::WebSocketUnsupported,
                &format!(
                    "service {} does not accept WebSocket: it does not declare `streaming`",
                    target.service
                ),
            );
        }
        Ok(()) => {
            let first = dispatches[0];
            out["dispatch"] = if dispatches.iter().all(|d| *d == first) {
                json!(dispatch_name(first))
            } else {
                json!(
                    "depends on the pick: Send to instances without `streaming`, Stream to those with it"
                )
            };
            out["outcome"] = json!({
                "status": null,
                "code": null,
                "message": format!(
                    "forwarded to one of {} candidate(s) of service {}, picked at request time by the balancer",
                    candidates.len(),
                    target.service
                ),
            });
        }
    }
    Ok(out)
}

fn segments_of(r: &Route) -> usize {
    r.prefix.split('/').filter(|s| !s.is_empty()).count()
}

fn outcome(kind: ErrorKind, message: &str) -> Value {
    json!({"status": kind.status().as_u16(), "code": kind.code(), "message": message})
}

#[cfg(test)]
mod tests;
