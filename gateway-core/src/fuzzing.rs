//! Entry points of the cargo-fuzz targets in `fuzz/`, one per target.
//!
//! Each takes the fuzzer's bytes, turns them into the input an outsider
//! controls (a client's request, a backend's answer, a registration, a Kafka
//! event, a Consul answer), runs the gateway's code on it and asserts what
//! must hold whatever the input. A panic here is a finding: either the
//! gateway panics on input it does not control, or an invariant broke.
//!
//! They live in the crate (behind the `fuzzing` feature) rather than in the
//! fuzz crate so that they can reach `pub(crate)` items, and so that
//! `cargo test` replays the committed corpora (`fuzz/corpus/<target>/`)
//! and fixed crashes (`fuzz/regressions/<target>/`) without nightly.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http_body_util::BodyExt;
use prost::Message;
use proto::v1 as pb;

use crate::convert::{self, RequestMeta, ResponseTarget};
use crate::error::ErrorKind;
use crate::registry::{
    Catalog, Health, Registration, RegistrationPolicy, Visibility, consul as consul_registry,
};
use crate::routing::{self, Route, RouteTable};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every fuzz target, by the name of its `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_to_wire", http_to_wire),
    ("wire_to_http", wire_to_http),
    ("routing", routing),
    ("registration", registration),
    ("sync_event", sync_event),
    ("consul_answer", consul_answer),
];

/// Header names worth more than random bytes: the ones the conversion
/// treats specially. The fuzzer picks one by index or spells its own.
const NAMES: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "content-length",
    "content-type",
    "traceparent",
    "tracestate",
    "set-cookie",
    "grpc-status",
];

/// A header name: a known one or the fuzzer's spelling.
#[derive(Debug, Arbitrary)]
enum Name<'a> {
    Known(u8),
    Raw(&'a str),
}

impl<'a> Name<'a> {
    fn as_str(&self) -> &'a str {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()],
            Name::Raw(s) => s,
        }
    }
}

/// What a client controls in a request, plus what the gateway knows of it.
#[derive(Debug, Arbitrary)]
struct ClientRequest<'a> {
    method: &'a str,
    uri: &'a str,
    version: u8,
    headers: Vec<(Name<'a>, &'a [u8])>,
    body: &'a [u8],
    trailers: Option<Vec<(Name<'a>, &'a [u8])>>,
    trusted_peer: bool,
    peer: (bool, u128, u16),
    deadline_ms: Option<u64>,
}

fn header_map(list: &[(Name<'_>, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in list {
        // hyper refuses what `http` cannot represent: such a request never
        // reaches the conversion.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_str().as_bytes()),
            http::HeaderValue::from_bytes(v),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// HTTP -> `ForwardingReq`: never panics; hop-by-hop fields (and those named
/// in `Connection`) never reach the backend; the forwarded headers are set
/// exactly once; method, raw path and query pass unchanged; what is sent
/// is valid HTTP again on the service side.
pub fn http_to_wire(data: &[u8]) {
    let Ok(input) = ClientRequest::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let version = match input.version % 4 {
        0 => http::Version::HTTP_10,
        1 => http::Version::HTTP_11,
        2 => http::Version::HTTP_2,
        _ => http::Version::HTTP_09,
    };
    let Ok(req) = http::Request::builder()
        .method(input.method)
        .uri(input.uri)
        .version(version)
        .body(())
    else {
        return;
    };
    let (mut parts, ()) = req.into_parts();
    parts.headers = header_map(&input.headers);
    let trailers = input.trailers.as_deref().map(header_map);
    let (v6, ip, port) = input.peer;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(ip))
    } else {
        IpAddr::V4(Ipv4Addr::from(ip as u32))
    };
    let meta = RequestMeta {
        request_id: "0123456789abcdef",
        peer: SocketAddr::new(ip, port),
        trusted_peer: input.trusted_peer,
        node_id: "fuzz-node",
        service: "svc",
        matched_prefix: "/svc",
        deadline: input.deadline_ms.map(Duration::from_millis),
        trace: None,
    };
    let _ = convert::ResponseTarget::of(&parts);
    // The borrowing encoder the `Send` path uses must agree with the
    // reference, `request_to_wire` + prost, to the decoded message.
    let encoded = convert::wire::EncodedRequest::encode(
        &parts,
        Bytes::copy_from_slice(input.body),
        trailers.as_ref(),
        &meta,
    );
    let wire = match convert::request_to_wire(
        &parts,
        Bytes::copy_from_slice(input.body),
        trailers.as_ref(),
        &meta,
    ) {
        Ok(w) => w,
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            let other = encoded.expect_err("the reference refused the request");
            assert_eq!((other.kind, other.message), (e.kind, e.message));
            return;
        }
    };
    let encoded = encoded
        .expect("the reference accepted the request")
        .to_bytes(convert::wire::deadline_ms(&meta));
    assert_eq!(
        pb::ForwardingReq::decode(encoded).as_ref(),
        Ok(&wire),
        "borrowed encoding differs from the reference"
    );

    assert_eq!(wire.method, parts.method.as_str());
    let (path, query) = proto::convert::split_target(&parts.uri);
    assert_eq!(wire.path, path);
    assert_eq!(wire.has_query, query.is_some());
    assert_eq!(wire.query, query.unwrap_or_default());
    assert_eq!(&wire.body[..], input.body);

    let named: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let set_by_gateway = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ];
    for h in &wire.headers {
        let n = h.name.as_str();
        assert!(
            !NAMES[1..10].contains(&n),
            "hop-by-hop header {n:?} forwarded"
        );
        assert!(
            set_by_gateway.contains(&n) || !named.iter().any(|c| c == n),
            "header {n:?} named in Connection forwarded"
        );
    }
    for n in set_by_gateway {
        assert_eq!(
            wire.headers.iter().filter(|h| h.name == n).count(),
            1,
            "{n} must be set exactly once"
        );
    }
    let xff = wire.headers.iter().find(|h| h.name == "x-forwarded-for");
    let peer_ip = meta.peer.ip().to_string();
    assert!(xff.is_some_and(|h| h.value.ends_with(peer_ip.as_bytes())));
    let ctx = wire.context.as_ref().expect("context is always set");
    assert_eq!(ctx.client_addresses.last(), Some(&meta.peer.to_string()));

    // The service SDK rebuilds the request from these lists.
    let rebuilt =
        proto::convert::headers_from_wire(&wire.headers).expect("forwarded headers are valid HTTP");
    assert_eq!(rebuilt.len(), wire.headers.len());
    proto::convert::headers_from_wire(&wire.trailers).expect("forwarded trailers are valid HTTP");
    // Routing sees the same path the backend gets.
    let _ = routing::normalise(&wire.path);
}

/// A backend's answer, with everything a hostile or broken backend could
/// put in it.
#[derive(Debug, Arbitrary)]
struct BackendAnswer<'a> {
    status: Status,
    headers: Vec<(Name<'a>, &'a [u8])>,
    trailers: Vec<(Name<'a>, &'a [u8])>,
    body: &'a [u8],
    head_request: bool,
    client_takes_trailers: bool,
}

#[derive(Debug, Arbitrary)]
enum Status {
    Known(u8),
    Raw(u32),
}

const STATUSES: &[u32] = &[
    0,
    1,
    99,
    100,
    101,
    103,
    199,
    200,
    204,
    304,
    404,
    599,
    600,
    999,
    1000,
    65_535,
    65_536 + 200,
    u32::MAX,
];

/// `ForwardingResp` -> HTTP: never panics; an answer HTTP cannot carry is a
/// 502-class `UpstreamInvalidResponse`, never passed on half-valid; what is
/// passed on has a final status, no hop-by-hop fields, framing of our own,
/// and the body (and trailers, when the client takes them) unchanged.
pub fn wire_to_http(data: &[u8]) {
    // The first byte picks the encoding: the protobuf the backend actually
    // sends (decoding it is prost's, the conversion ours) or a structured
    // answer that reaches deeper.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (resp, target) = if mode % 4 == 0 {
        // The gateway's own decoder (slices of the received buffer) gives
        // prost's answer, or prost's error.
        let fast = convert::wire::decode_response(Bytes::copy_from_slice(rest));
        let Ok(resp) = pb::ForwardingResp::decode(rest) else {
            assert!(fast.is_err(), "prost refused what the fast decoder took");
            return;
        };
        assert_eq!(
            fast.ok(),
            Some(convert::wire::Answer::from(resp.clone())),
            "fast decoder differs from prost"
        );
        let target = ResponseTarget {
            head_request: mode & 0x10 != 0,
            trailers: mode & 0x20 != 0,
        };
        (resp, target)
    } else {
        let Ok(a) = BackendAnswer::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        let list = |l: &[(Name<'_>, &[u8])]| -> Vec<pb::Header> {
            l.iter()
                .map(|(n, v)| pb::Header {
                    name: n.as_str().to_owned(),
                    value: Bytes::copy_from_slice(v),
                })
                .collect()
        };
        let status = match a.status {
            Status::Known(i) => STATUSES[usize::from(i) % STATUSES.len()],
            Status::Raw(s) => s,
        };
        let resp = pb::ForwardingResp {
            status,
            headers: list(&a.headers),
            trailers: list(&a.trailers),
            body: Bytes::copy_from_slice(a.body),
        };
        let target = ResponseTarget {
            head_request: a.head_request,
            trailers: a.client_takes_trailers,
        };
        (resp, target)
    };

    let body = resp.body.clone();
    let status = resp.status;
    let wire_trailers = resp.trailers.clone();
    let out = match convert::response_from_wire(resp, target) {
        Ok(out) => out,
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::UpstreamInvalidResponse, "{e:?}");
            return;
        }
    };
    assert!(
        (200..=599).contains(&out.status().as_u16()),
        "status {status} passed on as {}",
        out.status()
    );
    assert!(status == 0 || u32::from(out.status().as_u16()) == status);
    let trailers_sent = out.headers().contains_key(header::TRAILER);
    for n in &NAMES[1..10] {
        if *n != "trailer" {
            assert!(!out.headers().contains_key(*n), "hop-by-hop {n} passed on");
        }
    }
    if !(target.head_request && body.is_empty()) {
        assert!(!out.headers().contains_key(header::CONTENT_LENGTH));
    }

    // The body is in memory: polling it once gives all of it.
    let collected = std::pin::pin!(out.into_body().collect());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(Ok(collected)) = collected.poll(&mut cx) else {
        panic!("an in-memory body is ready at once and cannot fail");
    };
    let got_trailers = collected.trailers().cloned();
    assert_eq!(collected.to_bytes(), body);
    if trailers_sent {
        let expected = proto::convert::headers_from_wire(&wire_trailers).expect("sent, so valid");
        assert_eq!(got_trailers, Some(expected));
    } else {
        assert_eq!(got_trailers, None);
    }
}

/// A routing table and a request against it.
#[derive(Debug, Arbitrary)]
struct RoutingCase<'a> {
    path: &'a str,
    authority: &'a str,
    routes: Vec<(u8, &'a str, Vec<&'a str>)>,
    /// Per service, as the balancer makes it (the strictest any instance
    /// asks for applies to every route of the service).
    visibility: [u8; 3],
    public_only: bool,
}

/// Path normalisation and routing: normalising is idempotent (the
/// canonical spelling of a normalised path normalises to itself); a route
/// matches on whole segments only; the table picks what a plain scan of
/// every route by the documented rules picks.
pub fn routing(data: &[u8]) {
    let Ok(case) = RoutingCase::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(segs) = routing::normalise(case.path) else {
        assert!(!case.path.starts_with('/') || nul_after_decoding(case.path));
        return;
    };
    for s in &segs {
        assert!(!matches!(s.as_ref(), "" | "." | ".."), "segment {s:?} kept");
        assert!(!s.contains('\0'));
    }
    let canonical = routing::canonical(&segs);
    let again = routing::normalise(&canonical).expect("a canonical path normalises");
    assert_eq!(again, segs, "normalise(canonical({:?}))", case.path);

    let services = ["a", "b", "c"];
    let mut built: Vec<Route> = Vec::new();
    for (svc, prefix, hosts) in &case.routes {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let svc = usize::from(*svc) % services.len();
        let vis = match case.visibility[svc] % 3 {
            0 => Visibility::Public,
            1 => Visibility::Internal,
            _ => Visibility::Admin,
        };
        let svc = services[svc];
        if let Ok(r) = Route::new(svc.into(), prefix, &hosts, None, vis) {
            // The prefix a route reports is the canonical spelling of what
            // it matches.
            let reparsed: Vec<String> = routing::normalise(&r.prefix)
                .expect("a route prefix normalises")
                .into_iter()
                .map(Cow::into_owned)
                .collect();
            assert_eq!(
                reparsed, r.segments,
                "prefix {prefix:?} reported as {}",
                r.prefix
            );
            built.push(r);
        }
    }
    let allowed = |v: Visibility| !case.public_only || v == Visibility::Public;
    let (table, _conflicts) = RouteTable::new(built.clone());
    let got = table.lookup(case.authority, &segs, allowed);

    // The scan: of routes with the same prefix and hosts the first in rank
    // order shadows the others (a reported conflict), then the best match.
    let mut kept: HashMap<(Vec<String>, Vec<String>), &Route> = HashMap::new();
    for r in &built {
        let mut hosts = r.hosts.clone();
        hosts.sort();
        let k = kept.entry((r.segments.clone(), hosts)).or_insert(r);
        if r.rank() < k.rank() {
            *k = r;
        }
    }
    let host = routing::strip_port(case.authority);
    let best = kept
        .values()
        .filter(|r| allowed(r.visibility) && r.matches(host, &segs))
        .map(|r| r.rank())
        .min();
    match (got, best) {
        (None, None) => {}
        (Some(r), Some(best)) => {
            // Segment boundary: every segment of the prefix equals the
            // path's segment at its place; never a part of one.
            assert!(r.segments.len() <= segs.len());
            for (a, b) in r.segments.iter().zip(&segs) {
                assert_eq!(a, b);
            }
            assert!(allowed(r.visibility));
            assert_eq!(r.rank(), best, "table and scan disagree");
        }
        (got, best) => panic!("table picked {got:?}, a scan of the routes {best:?}"),
    }
}

fn nul_after_decoding(path: &str) -> bool {
    percent_encoding::percent_decode_str(path).any(|b| b == 0)
}

/// Registration JSON (HTTP API) and protobuf (gRPC API, Kafka events):
/// never panics; an accepted registration converts back and is accepted
/// again unchanged; every route it has can be built; the registration
/// written to Consul reads back as the same routing.
pub fn registration(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let wire = if mode % 2 == 0 {
        let Ok(json) = serde_json::from_slice::<crate::registration::RegistrationJson>(rest) else {
            return;
        };
        match json.into_proto() {
            Ok(w) => w,
            Err(_) => return,
        }
    } else {
        match pb::RegisterRequest::decode(rest) {
            Ok(r) => match r.registration {
                Some(w) => w,
                None => return,
            },
            Err(_) => return,
        }
    };
    let _ = crate::registration::registration_to_json(&wire);
    let policy = RegistrationPolicy {
        check_interval: Duration::from_secs(5),
        check_timeout: Duration::from_secs(1),
        lease: Duration::from_secs(30),
        allowed_networks: Vec::new(),
        upstream_tls: true,
    };
    let Ok(reg) = Registration::from_proto(wire, &policy) else {
        return;
    };
    let back = Registration::from_proto(reg.to_proto(), &policy).expect("accepted once");
    assert_eq!(back, reg);
    // Listings and the JSON API show it; reading that JSON gives it back.
    let json = crate::registration::registration_to_json(&reg.to_proto());
    let json: crate::registration::RegistrationJson =
        serde_json::from_value(json).expect("the JSON view parses as a registration");
    let again = Registration::from_proto(json.into_proto().expect("known enums"), &policy)
        .expect("accepted once");
    assert_eq!(again, reg);
    for r in &reg.routes {
        Route::new(
            reg.service.as_str().into(),
            &r.path_prefix,
            &r.hosts,
            r.timeout,
            reg.visibility,
        )
        .expect("a validated route builds");
    }

    // Through Consul: what another replica rebuilds from the agent entry.
    let config = crate::config::ConsulConfig::default();
    let Ok(agent) = consul_registry::to_agent_registration(&reg, &config) else {
        return;
    };
    let entry = crate::registry::consul::client::ServiceEntry {
        node: crate::registry::consul::client::Node {
            node: "n1".into(),
            address: "10.0.0.1".into(),
        },
        service: crate::registry::consul::client::CatalogService {
            id: agent.id.clone(),
            service: agent.name.clone(),
            tags: Some(agent.tags.clone()),
            address: agent.address.clone(),
            port: agent.port,
            meta: Some(agent.meta.clone()),
            weights: Some(agent.weights.clone()),
        },
        checks: Vec::new(),
    };
    let view = consul_registry::entry_to_view(&entry);
    let expected = consul_registry::in_force(&reg, &config);
    let got = &view.registration;
    assert_eq!(got.service, expected.service);
    assert_eq!(got.instance_id, expected.instance_id);
    assert_eq!(got.routes, expected.routes);
    assert_eq!(got.visibility, expected.visibility);
    assert_eq!(got.weight, expected.weight);
    assert_eq!(got.tags, expected.tags);
    assert_eq!(got.metadata, expected.metadata);
    assert_eq!(got.health, expected.health);
    assert_eq!(got.lease, expected.lease);
    assert_eq!(got.streaming, expected.streaming);
}

/// A Kafka registration event: never panics; an event is applied at most
/// once (the same bytes again are a duplicate or invalid); only complete
/// events of the known schema from another node are applied.
pub fn sync_event(data: &[u8]) {
    let own = "fuzz-node";
    let mut dedup = crate::registry::kafka::Dedup::default();
    let (verdict, ev) = dedup.judge(own, data);
    match &verdict {
        crate::registry::kafka::Verdict::Apply => {
            let ev = ev.as_ref().expect("an applied event is decoded");
            assert_eq!(ev.schema_version, crate::registry::kafka::SCHEMA_VERSION);
            assert!(!ev.node_id.is_empty() && ev.node_id != own);
            assert!(!ev.incarnation.is_empty());
            assert!(ev.sequence > 0);
            let change = ev.change.as_ref().expect("an applied event has a change");
            if let pb::sync_event::Change::ServiceUnreachable(_) = change {
                let _ = crate::registry::kafka::unreachable_is_stale(ev.timestamp_ms, u64::MAX);
                let _ = crate::registry::kafka::unreachable_is_stale(ev.timestamp_ms, 0);
            }
        }
        crate::registry::kafka::Verdict::Own => {
            assert_eq!(ev.as_ref().map(|e| e.node_id.as_str()), Some(own))
        }
        // Sequences start at 1: a 0 can only be a replay of nothing.
        crate::registry::kafka::Verdict::Duplicate => {
            assert_eq!(
                ev.as_ref().map(|e| e.sequence),
                Some(0),
                "a first event is new"
            );
        }
        crate::registry::kafka::Verdict::Invalid(_) => {}
    }
    let (again, _) = dedup.judge(own, data);
    assert_ne!(
        again,
        crate::registry::kafka::Verdict::Apply,
        "an event applied twice"
    );
    if verdict != crate::registry::kafka::Verdict::Apply {
        assert_eq!(again, verdict, "judging depends only on what was applied");
    }
}

/// A Consul answer: never panics. Health entries become instances (with
/// any `gw-*` metadata another tool or version wrote) and the balancer
/// builds routes and endpoints from them; the fingerprints of a check list
/// do not depend on the order Consul lists the checks in.
pub fn consul_answer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(entries) = serde_json::from_slice::<
                Option<Vec<crate::registry::consul::client::ServiceEntry>>,
            >(rest) else {
                return;
            };
            let instances: Vec<_> = entries
                .unwrap_or_default()
                .iter()
                .map(consul_registry::entry_to_view)
                .collect();
            for i in &instances {
                let r = &i.registration;
                assert!(!r.routes.is_empty());
                assert!((1..=1000).contains(&r.weight));
                assert!(r.metadata.keys().all(|k| !k.starts_with("gw-")));
                assert!(i.health == Health::Passing || i.health == Health::Failing);
                assert!(i.detail.chars().count() <= 300);
            }
            let config = crate::config::GatewayConfig::default();
            let balancer =
                crate::balance::Balancer::new(config.balancer, config.retry, config.timeouts);
            balancer.apply(&Catalog {
                instances,
                version: 1,
            });
        }
        1 => {
            let Ok(checks) = serde_json::from_slice::<
                Option<Vec<crate::registry::consul::client::StateCheck>>,
            >(rest) else {
                return;
            };
            let mut checks = checks.unwrap_or_default();
            let first = consul_registry::fingerprints(&checks);
            checks.reverse();
            let reversed = consul_registry::fingerprints(&checks);
            assert_eq!(first, reversed, "fingerprints depend on the listing order");
        }
        _ => {
            let _ = serde_json::from_slice::<HashMap<String, Option<Vec<String>>>>(rest);
        }
    }
}

#[cfg(test)]
mod tests;
