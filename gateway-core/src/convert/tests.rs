use super::*;
use http::{Method, Request};
use proptest::prelude::*;
use proto::convert::headers_from_wire;

fn meta(trusted: bool) -> RequestMeta<'static> {
    RequestMeta {
        request_id: "rid-1",
        peer: "10.1.2.3:4567".parse().unwrap(),
        trusted_peer: trusted,
        node_id: "gw-1",
        service: "svc",
        matched_prefix: "/svc",
        deadline: Some(Duration::from_millis(1500)),
        trace: None,
    }
}

fn parts(req: Request<()>) -> request::Parts {
    req.into_parts().0
}

fn names(r: &ForwardingReq) -> Vec<&str> {
    r.headers.iter().map(|h| h.name.as_str()).collect()
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_dropped() {
    let p = parts(
        Request::builder()
            .uri("/svc/a")
            .header("host", "example.com")
            .header("connection", "keep-alive, x-secret, X-Forwarded-For")
            .header("keep-alive", "timeout=5")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("upgrade", "h2c")
            .header("proxy-authorization", "Basic x")
            .header("x-keep", "yes")
            .body(())
            .unwrap(),
    );
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    let n = names(&w);
    for gone in [
        "connection",
        "keep-alive",
        "x-secret",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!n.contains(&gone), "{gone} forwarded: {n:?}");
    }
    assert!(n.contains(&"x-keep"));
    // Naming X-Forwarded-For in Connection cannot remove what the gateway sets.
    let xff: Vec<_> = w
        .headers
        .iter()
        .filter(|h| h.name == "x-forwarded-for")
        .collect();
    assert_eq!(xff.len(), 1);
    assert_eq!(&xff[0].value[..], b"10.1.2.3");
}

#[test]
fn forwarded_headers_from_untrusted_peers_are_replaced() {
    let p = parts(
        Request::builder()
            .uri("/svc")
            .header("host", "example.com")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .body(())
            .unwrap(),
    );
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    let get = |n: &str| {
        let v: Vec<_> = w
            .headers
            .iter()
            .filter(|h| h.name == n)
            .map(|h| h.value.clone())
            .collect();
        assert_eq!(v.len(), 1, "{n}");
        v[0].clone()
    };
    assert_eq!(&get("x-forwarded-for")[..], b"10.1.2.3");
    assert_eq!(&get("x-forwarded-proto")[..], b"http");
    assert_eq!(&get("x-forwarded-host")[..], b"example.com");
    assert_eq!(
        w.context.as_ref().unwrap().client_addresses,
        ["10.1.2.3:4567"]
    );

    let w = request_to_wire(&p, Bytes::new(), None, &meta(true)).unwrap();
    let xff: Vec<_> = w
        .headers
        .iter()
        .filter(|h| h.name == "x-forwarded-for")
        .collect();
    assert_eq!(&xff[0].value[..], b"6.6.6.6, 10.1.2.3");
    assert_eq!(w.scheme, "https");
    assert_eq!(
        w.context.unwrap().client_addresses,
        ["6.6.6.6", "10.1.2.3:4567"]
    );
}

#[test]
fn a_tls_connection_forwards_https() {
    let proto = |w: &ForwardingReq| {
        let h = w
            .headers
            .iter()
            .find(|h| h.name == "x-forwarded-proto")
            .unwrap();
        (
            w.scheme.clone(),
            String::from_utf8_lossy(&h.value).into_owned(),
        )
    };
    let req = || {
        Request::builder()
            .uri("/svc")
            .header("host", "example.com")
            .header("x-forwarded-proto", "http")
    };
    let mut p = parts(req().body(()).unwrap());
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    assert_eq!(proto(&w), ("http".into(), "http".into()));
    p.extensions.insert(crate::tls::ConnectionTls);
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    assert_eq!(proto(&w), ("https".into(), "https".into()));
    // A trusted proxy in front still says what its client used.
    let w = request_to_wire(&p, Bytes::new(), None, &meta(true)).unwrap();
    assert_eq!(proto(&w), ("http".into(), "http".into()));
}

#[test]
fn duplicate_host_is_malformed() {
    let p = parts(
        Request::builder()
            .uri("/x")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap(),
    );
    let e = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
}

#[test]
fn absolute_form_authority_wins_over_host() {
    let p = parts(
        Request::builder()
            .uri("http://right.example/x")
            .header("host", "wrong.example")
            .body(())
            .unwrap(),
    );
    assert_eq!(authority(&p).unwrap(), "right.example");
}

#[test]
fn raw_path_and_query_survive_exactly() {
    let p = parts(
        Request::builder()
            .uri("/svc/a%2Fb/../c?x=%20&&y")
            .header("host", "h")
            .body(())
            .unwrap(),
    );
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    assert_eq!(w.path, "/svc/a%2Fb/../c");
    assert_eq!(w.query, "x=%20&&y");
    assert!(w.has_query);
    let ctx = w.context.unwrap();
    assert_eq!(ctx.deadline_ms, 1500);
    assert_eq!(ctx.request_id, "rid-1");
}

#[test]
fn response_keeps_duplicate_set_cookie_and_drops_framing() {
    let resp = ForwardingResp {
        status: 201,
        headers: vec![
            wire("set-cookie", b"a=1"),
            wire("content-length", b"999"),
            wire("set-cookie", b"b=2"),
            wire("connection", b"x-hop"),
            wire("x-hop", b"1"),
        ],
        body: Bytes::from_static(b"hello"),
        trailers: vec![],
    };
    let r = response_from_wire(resp, ResponseTarget::default()).unwrap();
    assert_eq!(r.status(), 201);
    let c: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(c, ["a=1", "b=2"]);
    assert!(r.headers().get("content-length").is_none());
    assert!(r.headers().get("x-hop").is_none());
}

#[test]
fn bad_responses_are_upstream_errors() {
    for (status, headers) in [
        (99u32, vec![]),
        (101, vec![]),
        (600, vec![]),
        (200, vec![wire("x-bad", b"a\nb")]),
        (200, vec![wire("bad name", b"v")]),
    ] {
        let resp = ForwardingResp {
            status,
            headers,
            ..Default::default()
        };
        let e = response_from_wire(resp, ResponseTarget::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UpstreamInvalidResponse, "{status}");
    }
    assert_eq!(
        response_from_wire(ForwardingResp::default(), ResponseTarget::default())
            .unwrap()
            .status(),
        200
    );
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

fn header_name() -> impl Strategy<Value = String> {
    "x-[a-z0-9-]{1,16}"
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    // Visible ASCII, space, tab and obs-text, not starting/ending with
    // whitespace (HTTP trims it).
    proptest::collection::vec(
        prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff, Just(b' '), Just(b'\t')],
        0..40,
    )
    .prop_map(|mut v| {
        while v.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|c| *c == b' ' || *c == b'\t') {
            v.pop();
        }
        v
    })
}

fn path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,10}){1,5}"
}

fn query() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,20}")
}

proptest! {
    /// Any request survives HTTP -> ForwardingReq -> HTTP: method, raw
    /// target, headers with duplicates and order per name, body, trailers;
    /// the gateway only adds its forwarded headers and the request id.
    #[test]
    fn requests_survive_the_round_trip(
        method in token(),
        path in path(),
        query in query(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..12),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        trailers in proptest::collection::vec((header_name(), header_value()), 0..3),
    ) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let Ok(uri) = target.parse::<http::Uri>() else { return Ok(()) };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()) };
        let mut b = Request::builder().method(method.clone()).uri(uri).header("host", "svc.example:8080");
        for (n, v) in &headers {
            b = b.header(n.as_str(), HeaderValue::from_bytes(v).unwrap());
        }
        let p = parts(b.body(()).unwrap());
        let mut tmap = HeaderMap::new();
        for (n, v) in &trailers {
            tmap.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
        }
        let body = Bytes::from(body);
        let w = request_to_wire(&p, body.clone(), Some(&tmap), &meta(false)).unwrap();

        // Back to HTTP with the plain-data conversions the SDK uses.
        let back_headers = headers_from_wire(&w.headers).unwrap();
        prop_assert_eq!(&w.method, method.as_str());
        let back_target = if w.has_query { format!("{}?{}", w.path, w.query) } else { w.path.clone() };
        prop_assert_eq!(back_target, target);
        prop_assert_eq!(&w.body, &body);
        prop_assert_eq!(headers_from_wire(&w.trailers).unwrap(), tmap);
        for name in p.headers.keys() {
            let orig: Vec<_> = p.headers.get_all(name).iter().collect();
            let got: Vec<_> = back_headers.get_all(name).iter().collect();
            prop_assert_eq!(orig, got, "header {}", name);
        }
        let added = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"];
        for name in back_headers.keys() {
            prop_assert!(p.headers.contains_key(name) || added.contains(&name.as_str()), "unexpected {}", name);
        }
    }

    /// Any response a backend can send either converts faithfully or is a
    /// classified upstream error; never a panic.
    #[test]
    fn any_response_converts_or_errors(
        status in 0u32..1000,
        headers in proptest::collection::vec(("[ -~]{0,10}", proptest::collection::vec(any::<u8>(), 0..20)), 0..6),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let resp = ForwardingResp {
            status,
            headers: headers.iter().map(|(n, v)| wire(n, v)).collect(),
            body: Bytes::from(body),
            trailers: vec![],
        };
        match response_from_wire(resp, ResponseTarget::default()) {
            Ok(r) => prop_assert!(r.status().as_u16() >= 200),
            Err(e) => prop_assert_eq!(e.kind, ErrorKind::UpstreamInvalidResponse),
        }
    }
}

/// The order the contract promises: same-name fields keep their order;
/// names are grouped in the order of their first appearance. Removing a
/// hop-by-hop field must not move another name (HeaderMap::remove does).
#[test]
fn response_header_order_is_the_promised_one() {
    let resp = ForwardingResp {
        status: 200,
        headers: vec![
            wire("x-dup", b"1"),
            wire("connection", b"x-hop"),
            wire("x-mid", b"m"),
            wire("x-hop", b"h"),
            wire("x-dup", b"2"),
            wire("transfer-encoding", b"chunked"),
            wire("x-last", b"l"),
            wire("x-dup", b"3"),
        ],
        ..Default::default()
    };
    let r = response_from_wire(resp, ResponseTarget::default()).unwrap();
    let got: Vec<(&str, &[u8])> = r
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    assert_eq!(
        got,
        [
            ("x-dup", &b"1"[..]),
            ("x-dup", b"2"),
            ("x-dup", b"3"),
            ("x-mid", b"m"),
            ("x-last", b"l"),
        ]
    );
}

#[test]
fn request_header_order_is_the_promised_one() {
    let p = parts(
        Request::builder()
            .uri("/svc")
            .header("host", "h")
            .header("x-dup", "1")
            .header("x-mid", "m")
            .header("x-dup", "2")
            .header("te", "trailers")
            .header("x-last", "l")
            .body(())
            .unwrap(),
    );
    let w = request_to_wire(&p, Bytes::new(), None, &meta(false)).unwrap();
    let got: Vec<(&str, &[u8])> = w
        .headers
        .iter()
        .filter(|h| !h.name.starts_with("x-forwarded") && h.name != "x-request-id")
        .map(|h| (h.name.as_str(), &h.value[..]))
        .collect();
    assert_eq!(
        got,
        [
            ("host", &b"h"[..]),
            ("x-dup", b"1"),
            ("x-dup", b"2"),
            ("x-mid", b"m"),
            ("x-last", b"l"),
        ]
    );
}

/// Trailers reach a client that can take them, in a body HTTP/1.1 can
/// chunk (no exact size, `Trailer` announced); others get the body alone.
#[tokio::test]
async fn trailers_go_to_clients_that_accept_them() {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let resp = || ForwardingResp {
        status: 200,
        body: Bytes::from_static(b"data"),
        trailers: vec![wire("grpc-status", b"0"), wire("x-checksum", b"abc")],
        ..Default::default()
    };
    let accepting = ResponseTarget {
        head_request: false,
        trailers: true,
    };
    let r = response_from_wire(resp(), accepting).unwrap();
    assert_eq!(r.headers()["trailer"], "grpc-status, x-checksum");
    assert!(r.body().size_hint().exact().is_none());
    let collected = r.into_body().collect().await.unwrap();
    let t = collected.trailers().cloned().unwrap();
    assert_eq!(t["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "data");

    let r = response_from_wire(resp(), ResponseTarget::default()).unwrap();
    assert!(r.headers().get("trailer").is_none());
    assert_eq!(r.body().size_hint().exact(), Some(4));
}

#[test]
fn te_trailers_and_http2_accept_trailers() {
    let of = |req: Request<()>| ResponseTarget::of(&parts(req)).trailers;
    assert!(of(Request::builder()
        .header("te", "gzip, trailers;q=1")
        .body(())
        .unwrap()));
    assert!(!of(Request::builder()
        .header("te", "gzip")
        .body(())
        .unwrap()));
    assert!(of(Request::builder()
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap()));
}

/// `HeaderMap` holds at most 32,768 fields and panics beyond; the gateway
/// reads backend answers of any size, so a backend sending more is an
/// invalid answer (502), not a crashed request task.
#[test]
fn more_header_fields_than_http_holds_are_an_upstream_error() {
    // Distinct names: values of one name are not counted against the limit.
    let many = |n: usize| -> Vec<Header> {
        (0..n)
            .map(|i| Header {
                name: format!("x-many-{i}"),
                value: Bytes::from_static(b"1"),
            })
            .collect()
    };
    for (headers, trailers) in [(many(40_000), vec![]), (vec![], many(40_000))] {
        let resp = ForwardingResp {
            status: 200,
            headers,
            trailers,
            ..Default::default()
        };
        let target = ResponseTarget {
            head_request: false,
            trailers: true,
        };
        let Err(err) = response_from_wire(resp, target) else {
            panic!("40,000 header fields passed on");
        };
        assert_eq!(err.kind, ErrorKind::UpstreamInvalidResponse);
    }
    // Many values of one name fit, up to MAX_RESPONSE_FIELDS; 40,000 of
    // them (which hyper's encoder takes seconds to write) are refused too.
    let cookies = |n: usize| ForwardingResp {
        status: 200,
        headers: (0..n)
            .map(|_| Header {
                name: "set-cookie".into(),
                value: Bytes::from_static(b"a=1"),
            })
            .collect(),
        ..Default::default()
    };
    let Ok(r) = response_from_wire(cookies(MAX_RESPONSE_FIELDS), ResponseTarget::default()) else {
        panic!("{MAX_RESPONSE_FIELDS} values of one header refused");
    };
    assert_eq!(
        r.headers().get_all("set-cookie").iter().count(),
        MAX_RESPONSE_FIELDS
    );
    let Err(err) = response_from_wire(cookies(40_000), ResponseTarget::default()) else {
        panic!("40,000 values of one header passed on");
    };
    assert_eq!(err.kind, ErrorKind::UpstreamInvalidResponse);
}

/// A map filled to the limit by the backend still takes the `Trailer`
/// announcement the gateway adds (or is refused before): never a panic.
#[test]
fn a_full_header_map_still_announces_trailers() {
    for n in (24_570..24_580).chain(32_760..32_770) {
        let resp = ForwardingResp {
            status: 200,
            headers: (0..n)
                .map(|i| Header {
                    name: format!("x-{i}"),
                    value: Bytes::from_static(b"1"),
                })
                .collect(),
            trailers: vec![Header {
                name: "x-t".into(),
                value: Bytes::from_static(b"1"),
            }],
            ..Default::default()
        };
        let target = ResponseTarget {
            head_request: false,
            trailers: true,
        };
        if let Ok(r) = response_from_wire(resp, target) {
            assert!(r.headers().contains_key(header::TRAILER), "{n} fields");
        }
    }
}

#[test]
fn a_backend_answer_carries_at_most_1000_fields() {
    let fields = |n: usize| -> Vec<Header> {
        (0..n)
            .map(|i| Header {
                name: "x-h".into(),
                value: bytes::Bytes::from(i.to_string()),
            })
            .collect()
    };
    assert_eq!(response_headers(&fields(1000)).unwrap().len(), 1000);
    assert!(response_headers(&fields(1001)).is_err());
    assert_eq!(response_trailers(&fields(1000)).unwrap().len(), 1000);
    assert!(response_trailers(&fields(1001)).is_err());
}
