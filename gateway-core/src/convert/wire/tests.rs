//! The borrowing encoder against the reference, `request_to_wire` + prost.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, request};
use proptest::prelude::*;
use prost::Message;
use proto::v1::{ForwardingReq, ForwardingResp};

use super::*;
use crate::convert::{RequestMeta, request_to_wire};
use http::HeaderValue;

fn meta(trusted: bool, deadline: Option<Duration>, peer: &str) -> RequestMeta<'static> {
    RequestMeta {
        request_id: "rid-1",
        peer: peer.parse().unwrap(),
        trusted_peer: trusted,
        node_id: "gw-1",
        service: "svc",
        matched_prefix: "/svc",
        deadline,
        trace: None,
    }
}

/// Encodes both ways and checks they decode to the same message; returns it.
fn same(
    p: &request::Parts,
    body: &[u8],
    trailers: Option<&HeaderMap>,
    m: &RequestMeta<'_>,
) -> ForwardingReq {
    let reference = request_to_wire(p, Bytes::copy_from_slice(body), trailers, m);
    let enc = EncodedRequest::encode(p, Bytes::copy_from_slice(body), trailers, m);
    let (reference, enc) = match (reference, enc) {
        (Ok(r), Ok(e)) => (r, e),
        (Err(r), Err(e)) => {
            assert_eq!(r.kind, e.kind);
            assert_eq!(r.message, e.message);
            return ForwardingReq::default();
        }
        (r, e) => panic!("reference {r:?}, borrowed {e:?}"),
    };
    let bytes = enc.to_bytes(deadline_ms(m));
    assert_eq!(bytes.len(), enc.attempt(deadline_ms(m)).encoded_len());
    let decoded = ForwardingReq::decode(bytes).expect("decodes");
    assert_eq!(decoded, reference);
    reference
}

fn full_request() -> (request::Parts, HeaderMap) {
    let (p, ()) = Request::builder()
        .method("POST")
        .uri("/svc/a%2Fb?x=1&y=%20")
        .version(http::Version::HTTP_11)
        .header("host", "example.com:8080")
        .header("connection", "keep-alive, X-Secret")
        .header("keep-alive", "timeout=5")
        .header("x-secret", "1")
        .header("set-cookie", "a=1")
        .header("x-other", "o")
        .header("set-cookie", "b=2")
        .header("x-forwarded-for", "1.1.1.1, 2.2.2.2")
        .header("x-forwarded-for", "3.3.3.3")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.example")
        .header("x-request-id", "client-chosen")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("tracestate", "a=b")
        .header("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .header("x-empty", "")
        .body(())
        .unwrap()
        .into_parts();
    let mut trailers = HeaderMap::new();
    trailers.append("x-checksum", HeaderValue::from_static("abc"));
    trailers.append("x-checksum", HeaderValue::from_static("def"));
    trailers.append("x-t-empty", HeaderValue::from_static(""));
    (p, trailers)
}

#[test]
fn a_table_of_requests_encodes_as_the_reference() {
    let (p, trailers) = full_request();
    for trusted in [false, true] {
        for deadline in [
            None,
            Some(Duration::ZERO),
            Some(Duration::from_millis(1500)),
        ] {
            for peer in ["10.1.2.3:4567", "[2001:db8::1]:443", "[fe80::1%7]:1"] {
                let m = meta(trusted, deadline, peer);
                for body in [&b""[..], b"hello", &[0u8; 300][..], &[7u8; 70_000][..]] {
                    let r = same(&p, body, Some(&trailers), &m);
                    assert!(!r.headers.is_empty());
                    same(&p, body, None, &m);
                }
            }
        }
    }
    let m = meta(false, None, "10.0.0.1:1");
    // No query, `?` without one, HTTP/2 authority, a TLS connection, no Host.
    for (uri, version) in [
        ("/", http::Version::HTTP_11),
        ("/a?", http::Version::HTTP_11),
        ("http://h.example/a?q", http::Version::HTTP_2),
        ("https://h.example:8443/", http::Version::HTTP_2),
        ("/x", http::Version::HTTP_10),
    ] {
        let (mut p, ()) = Request::builder()
            .uri(uri)
            .version(version)
            .header("x-a", "1")
            .body(())
            .unwrap()
            .into_parts();
        same(&p, b"", None, &m);
        p.extensions.insert(crate::tls::ConnectionTls);
        same(&p, b"", None, &m);
    }
    // Refused alike: two Host headers, HTTP/1.1 without Host.
    let (p, ()) = Request::builder()
        .uri("/a")
        .header("host", "a")
        .header("host", "b")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(same(&p, b"", None, &m), ForwardingReq::default());
    let (p, ()) = Request::builder().uri("/a").body(()).unwrap().into_parts();
    assert_eq!(same(&p, b"", None, &m), ForwardingReq::default());
}

/// A retry re-sends the same bytes with a second context holding only the
/// new deadline; the backend sees one merged context.
#[test]
fn an_attempt_adds_its_deadline_to_the_context() {
    let (p, trailers) = full_request();
    let m = meta(true, Some(Duration::from_secs(30)), "10.1.2.3:4567");
    let enc = EncodedRequest::encode(&p, Bytes::from_static(b"body"), Some(&trailers), &m).unwrap();
    for deadline in [0u64, 1, 127, 128, 29_999, u64::MAX] {
        let mut expected =
            request_to_wire(&p, Bytes::from_static(b"body"), Some(&trailers), &m).unwrap();
        expected.context.as_mut().unwrap().deadline_ms = deadline;
        let a = enc.attempt(deadline);
        let mut buf = BytesMut::new();
        a.write(&mut buf);
        assert_eq!(buf.len(), a.encoded_len());
        assert_eq!(ForwardingReq::decode(buf.freeze()).unwrap(), expected);
    }
    // The fixed part is shared between attempts, not re-encoded.
    let (a, b) = (enc.attempt(1), enc.attempt(2));
    assert_eq!(a.req.fixed.as_ptr(), b.req.fixed.as_ptr());
}

/// The top-level field numbers of an encoded message, in order.
fn field_numbers(mut buf: &[u8]) -> Vec<u32> {
    use prost::encoding::{decode_key, decode_varint};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).unwrap();
        out.push(tag);
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).unwrap();
            }
            WireType::LengthDelimited => {
                let n = decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[n..];
            }
            other => panic!("unexpected wire type {other:?}"),
        }
    }
    out
}

/// The context travels as one occurrence of field 12, whatever the
/// deadline: protobuf.js (`@grpc/proto-loader`) keeps only the last
/// occurrence of an embedded message instead of merging them, and a Node
/// backend saw an empty request id behind the gateway when the deadline
/// came as a second `context`.
#[test]
fn the_context_is_one_field_with_the_deadline_inside() {
    let (p, trailers) = full_request();
    let m = meta(true, Some(Duration::from_secs(30)), "10.1.2.3:4567");
    let enc = EncodedRequest::encode(&p, Bytes::from_static(b"body"), Some(&trailers), &m).unwrap();
    for deadline in [0u64, 1, 30_000] {
        let bytes = enc.to_bytes(deadline);
        let fields = field_numbers(&bytes);
        assert_eq!(
            fields.iter().filter(|&&f| f == CONTEXT).count(),
            1,
            "{fields:?}"
        );
        // Decoding only the last occurrence (as protobuf.js does) still
        // gives every context field.
        let ctx = ForwardingReq::decode(bytes).unwrap().context.unwrap();
        assert_eq!(ctx.request_id, "rid-1");
        assert_eq!(ctx.service, "svc");
        assert_eq!(ctx.deadline_ms, deadline);
    }
}

/// The codec frames exactly one message in a buffer of exactly its size.
#[test]
fn the_encoder_asks_for_exactly_the_frame() {
    let (p, trailers) = full_request();
    let m = meta(false, None, "10.1.2.3:4567");
    let enc =
        EncodedRequest::encode(&p, Bytes::from(vec![1u8; 5000]), Some(&trailers), &m).unwrap();
    let a = enc.attempt(250);
    let mut codec = SendCodec::for_attempt(&a);
    let e = codec.encoder();
    assert_eq!(e.frame_len, tonic::codec::HEADER_SIZE + a.encoded_len());
    let settings = format!("{:?}", codec.decoder().buffer_settings());
    assert!(settings.contains("buffer_size: 1024"), "{settings}");
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "x-[a-z0-9-]{1,8}",
        Just("connection".to_owned()),
        Just("keep-alive".to_owned()),
        Just("te".to_owned()),
        Just("trailer".to_owned()),
        Just("upgrade".to_owned()),
        Just("x-forwarded-for".to_owned()),
        Just("x-forwarded-proto".to_owned()),
        Just("x-forwarded-host".to_owned()),
        Just("x-request-id".to_owned()),
        Just("traceparent".to_owned()),
        Just("tracestate".to_owned()),
        Just("host".to_owned()),
        Just("set-cookie".to_owned()),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(
            prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff, Just(b' '), Just(b',')],
            0..30,
        ),
        Just(b"x-a, X-B ,keep-alive".to_vec()),
        Just(b"http".to_vec()),
        Just(b"https".to_vec()),
        Just(b"1.2.3.4, , 5.6.7.8".to_vec()),
    ]
}

fn header_map(list: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in list {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            map.append(n, v);
        }
    }
    map
}

proptest! {
    #[test]
    fn any_request_encodes_as_the_reference(
        method in "[A-Z]{1,7}",
        target in "(/[A-Za-z0-9%._-]{0,6}){1,3}(\\?[A-Za-z0-9=&%]{0,10})?",
        version in 0usize..4,
        headers in proptest::collection::vec((header_name(), header_value()), 0..14),
        trailers in proptest::option::of(proptest::collection::vec((header_name(), header_value()), 0..3)),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        trusted in any::<bool>(),
        v6 in any::<bool>(),
        port in any::<u16>(),
        deadline in proptest::option::of(0u64..100_000),
        tls in any::<bool>(),
        host in proptest::option::of("[a-z0-9.]{1,12}(:[0-9]{1,5})?"),
    ) {
        let version = [
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_09,
        ][version];
        let (mut p, ()) = Request::builder()
            .method(method.as_str())
            .uri(target.as_str())
            .version(version)
            .body(())
            .unwrap()
            .into_parts();
        p.headers = header_map(&headers);
        if let Some(host) = host {
            p.headers.append(http::header::HOST, HeaderValue::from_str(&host).unwrap());
        }
        if tls {
            p.extensions.insert(crate::tls::ConnectionTls);
        }
        let trailers = trailers.as_deref().map(header_map);
        let peer = if v6 { format!("[2001:db8::7]:{port}") } else { format!("192.0.2.1:{port}") };
        let m = meta(trusted, deadline.map(Duration::from_millis), &peer);
        let r = same(&p, &body, trailers.as_ref(), &m);
        // Most cases are accepted (an error compares only kind and message).
        prop_assume!(r != ForwardingReq::default());
    }
}

/// The fast answer decoder against prost: the same answer, or the same error.
fn same_answer(bytes: &[u8]) {
    let prost = ForwardingResp::decode(bytes)
        .map(Answer::from)
        .map_err(|e| e.to_string());
    let fast = decode_response(Bytes::copy_from_slice(bytes)).map_err(|s| {
        assert_eq!(s.code(), tonic::Code::Internal);
        s.message().to_owned()
    });
    assert_eq!(fast, prost);
}

fn encoded_answer(status: u32, fields: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let h: Vec<proto::v1::Header> = fields
        .iter()
        .map(|(n, v)| proto::v1::Header {
            name: n.clone(),
            value: Bytes::copy_from_slice(v),
        })
        .collect();
    ForwardingResp {
        status,
        headers: h.clone(),
        body: Bytes::copy_from_slice(body),
        trailers: h.into_iter().rev().collect(),
    }
    .encode_to_vec()
}

#[test]
fn answers_decode_as_prost_decodes_them() {
    let fields = vec![
        ("content-type".to_owned(), b"text/plain".to_vec()),
        ("set-cookie".to_owned(), b"a=1".to_vec()),
        ("set-cookie".to_owned(), b"b=2".to_vec()),
        ("x-empty".to_owned(), vec![]),
        (String::new(), b"no name".to_vec()),
    ];
    let msg = encoded_answer(200, &fields, b"hello");
    same_answer(&msg);
    same_answer(&[]);
    let fast = decode_response(Bytes::from(msg.clone())).unwrap();
    assert_eq!(fast.status, 200);
    assert_eq!(fast.headers[1].name(), "set-cookie");
    assert_eq!(&fast.body[..], b"hello");
    // Later scalars win, repeated fields append, unknown fields are skipped,
    // as prost does: the message twice, plus unknown fields of every kind.
    let mut twice = msg.clone();
    twice.extend_from_slice(&encoded_answer(404, &fields[..1], b"again"));
    for unknown in [
        &[0x28, 0x05][..],                     // 5: varint
        &[0x31, 1, 2, 3, 4, 5, 6, 7, 8],       // 6: fixed64
        &[0x3a, 0x02, b'h', b'i'],             // 7: bytes
        &[0x45, 1, 2, 3, 4],                   // 8: fixed32
        &[0x4b, 0x08, 0x01, 0x4c],             // 9: a group (prost skips it)
        &[0x12, 0x04, 0x18, 0x01, 0x0a, 0x00], // a header with an unknown field
    ] {
        let mut m = twice.clone();
        m.extend_from_slice(unknown);
        same_answer(&m);
    }
    // Failures: truncated, wire types that do not match, a name that is not
    // UTF-8, tag 0, an over-long varint.
    for bad in [
        &msg[..msg.len() - 1],
        &[0x0a, 0x00][..],
        &[0x10, 0x01],
        &[0x12, 0x03, 0x0a, 0x01, 0xff],
        &[0x12, 0x02, 0x08, 0x01],
        &[0x00, 0x01],
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
        &[0x1a, 0x05, b'a'],
    ] {
        same_answer(bad);
    }
}

proptest! {
    #[test]
    fn any_answer_decodes_as_prost_decodes_it(
        status in any::<u32>(),
        fields in proptest::collection::vec(("[ -~]{0,12}", proptest::collection::vec(any::<u8>(), 0..20)), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..100),
        cut in any::<prop::sample::Index>(),
        flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        garbage in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let msg = encoded_answer(status, &fields, &body);
        same_answer(&msg);
        same_answer(&msg[..cut.index(msg.len() + 1)]);
        if let Some((at, byte)) = flip
            && !msg.is_empty()
        {
            let mut m = msg.clone();
            m[at.index(msg.len())] = byte;
            same_answer(&m);
        }
        same_answer(&garbage);
        let mut m = msg;
        m.extend_from_slice(&garbage);
        same_answer(&m);
    }
}

/// The conversion to HTTP gives the same outcome from either decoding.
#[test]
fn either_decoding_converts_alike() {
    let target = crate::convert::ResponseTarget {
        head_request: false,
        trailers: true,
    };
    for fields in [
        vec![("content-type".to_owned(), b"text/plain".to_vec())],
        vec![
            ("connection".to_owned(), b"x-hop".to_vec()),
            ("x-hop".to_owned(), b"\r\n".to_vec()),
            ("content-length".to_owned(), b"99".to_vec()),
            ("x-ok".to_owned(), b"1".to_vec()),
        ],
        vec![("x-bad".to_owned(), b"a\r\nb".to_vec())],
        vec![("bad name".to_owned(), b"1".to_vec())],
        vec![("x-h".to_owned(), b"1".to_vec()); crate::convert::MAX_RESPONSE_FIELDS + 1],
    ] {
        let msg = encoded_answer(201, &fields, b"body");
        let a = crate::convert::response_from_wire(
            decode_response(Bytes::from(msg.clone())).unwrap(),
            target,
        );
        let b =
            crate::convert::response_from_wire(ForwardingResp::decode(&msg[..]).unwrap(), target);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.status(), b.status());
                assert_eq!(a.headers(), b.headers());
            }
            (Err(a), Err(b)) => assert_eq!((a.kind, a.message), (b.kind, b.message)),
            (a, b) => panic!("{a:?} against {b:?}"),
        }
    }
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for a in [
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.1.20.3:80",
        "1.2.3.4:9",
    ] {
        let a: std::net::SocketAddrV4 = a.parse().unwrap();
        assert_eq!(Stack::v4(*a.ip(), Some(a.port())).as_str(), a.to_string());
        assert_eq!(Stack::v4(*a.ip(), None).as_str(), a.ip().to_string());
    }
}
