//! Replays the committed fuzz corpora and fixed crashes: what the fuzzer
//! once found stays found, without nightly or cargo-fuzz.

use std::path::Path;

use super::TARGETS;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(dir);
    let mut replayed = 0;
    for (target, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panics", file.display());
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn corpora_replay_cleanly() {
    assert!(replay("corpus") > 0, "no corpus found under fuzz/corpus");
}

#[test]
fn fixed_crashes_stay_fixed() {
    replay("regressions");
}

#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (target, _) in TARGETS {
        let n = std::fs::read_dir(root.join(target)).map_or(0, Iterator::count);
        assert!(n > 0, "fuzz/corpus/{target} is empty");
    }
}

/// Writes the protobuf seeds of the corpora (the JSON ones are written by
/// hand). Run once after a change of the contract:
/// `cargo test -p gateway-core --lib fuzzing -- --ignored write_protobuf_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_protobuf_seeds() {
    use bytes::Bytes;
    use prost::Message;
    use proto::v1 as pb;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = |target: &str, name: &str, mode: Option<u8>, msg: Vec<u8>| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let mut data: Vec<u8> = mode.into_iter().collect();
        data.extend(msg);
        std::fs::write(dir.join(name), data).unwrap();
    };
    let h = |n: &str, v: &str| pb::Header {
        name: n.into(),
        value: Bytes::copy_from_slice(v.as_bytes()),
    };

    // wire_to_http: mode byte 0x00 = protobuf; 0x10 = HEAD; 0x20 = trailers.
    let resp = |status: u32, headers: Vec<pb::Header>, body: &str, trailers: Vec<pb::Header>| {
        pb::ForwardingResp {
            status,
            headers,
            body: Bytes::copy_from_slice(body.as_bytes()),
            trailers,
        }
        .encode_to_vec()
    };
    write(
        "wire_to_http",
        "ok-json",
        Some(0x00),
        resp(
            200,
            vec![
                h("content-type", "application/json"),
                h("set-cookie", "a=1"),
                h("set-cookie", "b=2"),
            ],
            "{\"ok\":true}",
            vec![],
        ),
    );
    write(
        "wire_to_http",
        "hop-by-hop",
        Some(0x00),
        resp(
            404,
            vec![
                h("connection", "x-secret, keep-alive"),
                h("x-secret", "1"),
                h("keep-alive", "5"),
                h("transfer-encoding", "chunked"),
                h("content-length", "999"),
            ],
            "nope",
            vec![],
        ),
    );
    write(
        "wire_to_http",
        "trailers",
        Some(0x20),
        resp(
            200,
            vec![h("content-type", "text/plain")],
            "streamed",
            vec![h("grpc-status", "0"), h("x-checksum", "abc")],
        ),
    );
    write(
        "wire_to_http",
        "head-with-length",
        Some(0x30),
        resp(
            200,
            vec![h("content-length", "1234")],
            "",
            vec![h("x-t", "1")],
        ),
    );
    write(
        "wire_to_http",
        "status-1xx",
        Some(0x00),
        resp(103, vec![h("link", "</a>")], "", vec![]),
    );
    write(
        "wire_to_http",
        "status-huge",
        Some(0x00),
        resp(70_000, vec![], "x", vec![]),
    );
    write(
        "wire_to_http",
        "bad-header",
        Some(0x00),
        resp(
            200,
            vec![h("x-ok", "1"), h("bad name", "v"), h("x-crlf", "a\r\nb")],
            "",
            vec![],
        ),
    );

    // registration: an odd mode byte = protobuf `RegisterRequest`.
    let reg = pb::Registration {
        service: "orders".into(),
        instance_id: "orders-1".into(),
        address: "10.0.0.7:50051".into(),
        routes: vec![pb::Route {
            path_prefix: "/orders".into(),
            hosts: vec!["shop.example".into()],
            timeout_ms: 2_000,
            stream: true,
            max_duration_ms: 60_000,
            strip_prefix: true,
        }],
        visibility: pb::Visibility::Internal as i32,
        tags: vec!["v1".into()],
        metadata: [("team".to_string(), "shop".to_string())].into(),
        weight: 50,
        health: Some(pb::HealthCheck {
            kind: pb::health_check::Kind::Http as i32,
            http_path: "/healthz".into(),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            deregister_critical_after_ms: 120_000,
            ..Default::default()
        }),
        lease_ms: 30_000,
        streaming: true,
        tls: true,
        tls_server_name: "orders.internal".into(),
    };
    let reg_req = |r: pb::Registration| {
        pb::RegisterRequest {
            registration: Some(r),
        }
        .encode_to_vec()
    };
    write(
        "registration",
        "proto-full",
        Some(0x01),
        reg_req(reg.clone()),
    );
    let mut ttl = reg.clone();
    ttl.health = Some(pb::HealthCheck {
        kind: pb::health_check::Kind::Ttl as i32,
        ..Default::default()
    });
    ttl.address = "[::1]:8080".into();
    ttl.routes.clear();
    write("registration", "proto-ttl-ipv6", Some(0x01), reg_req(ttl));
    let mut bad = reg.clone();
    bad.visibility = 7;
    bad.weight = 5_000;
    write("registration", "proto-bad-enums", Some(0x01), reg_req(bad));

    // sync_event: the raw Kafka payload.
    let ev = |seq: u64, ts: u64, change: pb::sync_event::Change| {
        pb::SyncEvent {
            schema_version: 1,
            node_id: "node-b".into(),
            incarnation: "c0ffee".into(),
            sequence: seq,
            timestamp_ms: ts,
            origin_time_ms: 0,
            change: Some(change),
        }
        .encode_to_vec()
    };
    let key = pb::InstanceKey {
        service: "orders".into(),
        instance_id: "orders-1".into(),
    };
    write(
        "sync_event",
        "registered",
        None,
        ev(
            1,
            1_700_000_000_000,
            pb::sync_event::Change::Registered(reg.clone()),
        ),
    );
    write(
        "sync_event",
        "deregistered",
        None,
        ev(
            7,
            1_700_000_000_000,
            pb::sync_event::Change::Deregistered(key.clone()),
        ),
    );
    write(
        "sync_event",
        "unreachable",
        None,
        ev(
            9,
            1_700_000_000_000,
            pb::sync_event::Change::ServiceUnreachable(key.clone()),
        ),
    );
    write(
        "sync_event",
        "schema-2",
        None,
        pb::SyncEvent {
            schema_version: 2,
            node_id: "node-b".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
}
