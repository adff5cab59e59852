//! The registration API of the real `gateway` binary: tokens scoped to
//! services over HTTP/JSON and gRPC, with the embedded registry and with a
//! real Consul (a refused call writes nothing to Consul's catalog), and the
//! documented settings (`--print-config`, node id, flags) against the code.

mod support;

use std::process::Stdio;

use proto::v1 as pb;
use proto::v1::registry_service_client::RegistryServiceClient;
use serde_json::{Value, json};
use support::{ConsulProcess, DEADLINE, GatewayProcess, eventually, get_json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A shared token for every service, one for `<p>orders` and `<p>orders-*`,
/// one for `<p>payments` (`p` keeps parallel tests' names apart).
fn token_env(p: &str) -> String {
    format!("{p}orders,{p}orders-*=o-tok;{p}payments=p-tok")
}

async fn start(p: &str, extra: &[&str]) -> GatewayProcess {
    let env = token_env(p);
    let mut args = vec!["--registration-token", "all-tok"];
    args.extend_from_slice(extra);
    GatewayProcess::start(&args, &[("GATEWAY_REGISTRATION_TOKENS", &env)]).await
}

fn registration(service: &str, port: u16) -> Value {
    json!({"service": service, "instance_id": format!("{service}-1"),
        "address": format!("127.0.0.1:{port}"), "health": {"kind": "ttl"}, "lease_ms": 600000})
}

async fn http(
    gw: &GatewayProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = gw
        .http
        .request(method, format!("{}{path}", gw.registration_url()));
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.expect("registration API answers");
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, www, resp.json().await.unwrap_or(Value::Null))
}

fn grpc_register(
    service: &str,
    port: u16,
    token: Option<&str>,
) -> tonic::Request<pb::RegisterRequest> {
    let mut req = tonic::Request::new(pb::RegisterRequest {
        registration: Some(pb::Registration {
            service: service.into(),
            instance_id: format!("{service}-1"),
            address: format!("127.0.0.1:{port}"),
            health: Some(pb::HealthCheck {
                kind: pb::health_check::Kind::Ttl as i32,
                ..Default::default()
            }),
            lease_ms: 600_000,
            ..Default::default()
        }),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("bearer {t}").parse().unwrap());
    }
    req
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// Registers what the tokens allow and checks every refusal, over both
/// protocols; returns the services that must be registered afterwards.
async fn exercise_scopes(gw: &GatewayProcess, p: &str) -> Vec<String> {
    let (orders, orders_eu, payments, other) = (
        format!("{p}orders"),
        format!("{p}orders-eu"),
        format!("{p}payments"),
        format!("{p}shipping"),
    );
    let put = reqwest::Method::PUT;
    // HTTP: in scope -> 201; out of scope -> 403 forbidden; unknown -> 401.
    let (s, _, v) = http(
        gw,
        put.clone(),
        "/v1/registrations",
        Some(&registration(&orders, 7001)),
        Some("o-tok"),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, _, v) = http(
        gw,
        put.clone(),
        "/v1/registrations",
        Some(&registration(&payments, 7002)),
        Some("o-tok"),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (s, www, v) = http(
        gw,
        put.clone(),
        "/v1/registrations",
        Some(&registration(&payments, 7002)),
        Some("guess"),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    assert_eq!(www.as_deref(), Some("Bearer realm=\"registration\""));
    let (s, _, _) = http(
        gw,
        put.clone(),
        "/v1/registrations",
        Some(&registration(&other, 7003)),
        None,
    )
    .await;
    assert_eq!(s, 401);
    // Renewal and deregistration of another service's instance: 403, kept.
    let key = format!("/v1/registrations/{orders}/{orders}-1");
    let (s, _, v) = http(gw, reqwest::Method::DELETE, &key, None, Some("p-tok")).await;
    assert_eq!(s, 403, "{v}");
    let (s, _, v) = http(
        gw,
        reqwest::Method::POST,
        &format!("{key}/renew"),
        None,
        Some("p-tok"),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, _, v) = http(
        gw,
        reqwest::Method::POST,
        &format!("{key}/renew"),
        None,
        Some("o-tok"),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // gRPC: the same decisions, as PERMISSION_DENIED / UNAUTHENTICATED.
    let mut client = RegistryServiceClient::connect(gw.registration_url())
        .await
        .unwrap();
    let err = client
        .register(grpc_register(&payments, 7002, Some("o-tok")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = client
        .register(grpc_register(&payments, 7002, Some("guess")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client
        .register(grpc_register(&payments, 7002, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client
        .deregister(with_token(
            pb::DeregisterRequest {
                service: orders.clone(),
                instance_id: format!("{orders}-1"),
            },
            "p-tok",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = client
        .renew(with_token(
            pb::RenewRequest {
                service: orders.clone(),
                instance_id: format!("{orders}-1"),
            },
            "p-tok",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // In scope over gRPC (scheme in lower case), and the shared token.
    client
        .register(grpc_register(&orders_eu, 7004, Some("o-tok")))
        .await
        .unwrap();
    client
        .register(grpc_register(&other, 7003, Some("all-tok")))
        .await
        .unwrap();

    // Counted on the admin listener: forbidden 3 over HTTP + 3 over gRPC,
    // unauthenticated 2 + 2.
    let admin = get_json(
        &gw.http,
        &format!("http://{}/admin/services?instances=false", gw.admin),
    )
    .await;
    let rejected = &admin["registration"]["rejected"];
    assert_eq!(rejected["forbidden"], 6, "{admin}");
    assert_eq!(rejected["unauthenticated"], 4, "{admin}");

    let list = client
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = list
        .instances
        .iter()
        .filter_map(|i| i.registration.as_ref().map(|r| r.service.clone()))
        .filter(|s| s.starts_with(p))
        .collect();
    names.sort();
    let mut want = vec![orders, orders_eu, other];
    want.sort();
    assert_eq!(names, want, "refused calls changed nothing");
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_over_http_and_grpc() {
    let gw = start("mem-", &[]).await;
    exercise_scopes(&gw, "mem-").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_with_consul_write_nothing_when_refused() {
    let consul = ConsulProcess::start(None).await;
    let gw = start(
        "con-",
        &["--consul", &consul.url(), "--allow-network", "127.0.0.0/8"],
    )
    .await;
    let registered = exercise_scopes(&gw, "con-").await;
    // Consul's catalog holds exactly what was allowed: the refused
    // registrations never reached it, the refused deregistration kept its
    // instance.
    let catalog = eventually("consul's catalog shows the allowed services", || {
        let (http, url) = (
            gw.http.clone(),
            format!("{}/v1/catalog/services", consul.url()),
        );
        let registered = registered.clone();
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            registered.iter().all(|s| v.get(s).is_some()).then_some(v)
        }
    })
    .await;
    let mut ours: Vec<&String> = catalog
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("con-"))
        .collect();
    ours.sort();
    assert_eq!(ours, registered.iter().collect::<Vec<_>>(), "{catalog}");
    let payments: Value = get_json(
        &gw.http,
        &format!("{}/v1/catalog/service/con-payments", consul.url()),
    )
    .await;
    assert_eq!(payments, json!([]));
}

/// Runs `gateway` with `args` and `env` to completion; its stdout.
async fn run_gateway(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("gateway exits in time")
        .expect("run gateway");
    assert!(out.status.success(), "{args:?}: {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn print_config_redacts_secrets_and_shows_env_settings() {
    let out = run_gateway(
        &[
            "--print-config",
            "--registration-token",
            "shared-secret-1",
            "--registration-scoped-token",
            "orders,orders-*=scoped-secret-2",
            "--consul",
            "http://127.0.0.1:1",
            "--consul-token",
            "consul-secret-3",
        ],
        &[
            ("GATEWAY_ALLOWED_NETWORKS", "10.0.0.0/8,192.168.0.0/16"),
            ("GATEWAY_REGISTRATION_TOKENS", "ignored=flag-wins-4"),
        ],
    )
    .await;
    for secret in [
        "shared-secret-1",
        "scoped-secret-2",
        "consul-secret-3",
        "flag-wins-4",
    ] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert_eq!(out.matches("\"<redacted>\"").count(), 3, "{out}");
    assert!(out.contains(r#"services = ["#), "{out}");
    assert!(out.contains("\"orders-*\""), "{out}");
    // The environment variable the README names does set the networks.
    assert!(
        out.contains(r#"allowed_networks = ["#) && out.contains("\"192.168.0.0/16\""),
        "{out}"
    );

    let out = run_gateway(
        &["--print-config"],
        &[("GATEWAY_REGISTRATION_TOKENS", "a,b-*=t1;c=t2")],
    )
    .await;
    assert_eq!(out.matches("[[registration.tokens]]").count(), 2, "{out}");
    assert!(!out.contains("t1") && !out.contains("t2"), "{out}");
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
}

/// The README's configuration tables: (setting cell, default, flag / env).
fn config_rows(readme: &str) -> Vec<(String, String, String)> {
    readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() == 5).then(|| (cells[1].into(), cells[2].into(), cells[3].into()))
        })
        .collect()
}

/// The node id the README promises is the one the binary takes.
#[tokio::test]
async fn default_node_id_is_as_documented() {
    let readme = readme();
    let rows = config_rows(&readme);
    let row = rows
        .iter()
        .find(|r| r.0 == "`node_id`")
        .expect("README documents node_id");
    assert_eq!(row.1, "`<host name>-<process id>`", "{row:?}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--public", "127.0.0.1:0", "--internal", "127.0.0.1:0"])
        .args(["--registration", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".into());
    assert!(
        line.contains(&format!(" node_id={host}-{pid} ")),
        "{line} (pid {pid})"
    );
    let _ = child.kill().await;
}

/// Every flag and environment variable of `--help` is in the README's
/// tables, and each setting has one row (a second row once said
/// `registration.allowed_networks` was file-only while a flag set it).
#[tokio::test]
async fn readme_config_tables_match_the_flags() {
    let readme = readme();
    let rows = config_rows(&readme);
    let mut seen = std::collections::HashSet::new();
    for (setting, _, _) in &rows {
        for name in setting.split(" / ") {
            assert!(seen.insert(name.to_owned()), "{name} has two rows");
        }
    }
    let help = run_gateway(&["--help"], &[]).await;
    let names = |text: &str| -> std::collections::HashSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| {
                w.starts_with("--") || w.starts_with("GATEWAY_") || *w == "CONSUL_HTTP_TOKEN"
            })
            .map(String::from)
            .collect()
    };
    let documented: String = rows.iter().map(|r| format!("{}\n", r.2)).collect();
    let documented = names(&documented);
    // Not settings: what to read, what to print, how to log.
    let elsewhere = [
        "--help",
        "--version",
        "--config",
        "--print-config",
        "--log-json",
        "GATEWAY_CONFIG",
        "GATEWAY_LOG_JSON",
    ];
    for name in names(&help) {
        if !elsewhere.contains(&name.as_str()) {
            assert!(
                documented.contains(&name),
                "{name} from --help is not in the README's configuration tables"
            );
        }
    }
}

/// Oversize input against the real listener: a JSON 413 over HTTP, and
/// RESOURCE_EXHAUSTED (not tonic's OUT_OF_RANGE) over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_registrations_are_refused_in_the_api_s_own_words() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let mut body = br#"{"service":"big","address":"127.0.0.1:1"}"#.to_vec();
    body.resize(10 * 1024 * 1024, b' ');
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");

    let mut client = RegistryServiceClient::connect(gw.registration_url())
        .await
        .unwrap();
    let mut req = grpc_register("big", 1, None);
    let reg = req.get_mut().registration.as_mut().unwrap();
    reg.tags = vec!["x".repeat(1024); 5 * 1024];
    let err = client.register(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    let list = client.list(pb::ListRequest::default()).await.unwrap();
    assert!(list.into_inner().instances.is_empty());
}

/// With replica sync, a refused call publishes nothing: the topic carries
/// events for the allowed registrations only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_with_kafka_publish_nothing_when_refused() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let (consul, kafka) = (
        ConsulProcess::start(None).await,
        support::KafkaProcess::start().await,
    );
    let topic = "reg-scopes";
    let gw = start(
        "kaf-",
        &[
            "--consul",
            &consul.url(),
            "--allow-network",
            "127.0.0.0/8",
            "--kafka-brokers",
            &kafka.bootstrap,
            "--kafka-topic",
            topic,
        ],
    )
    .await;
    let registered = exercise_scopes(&gw, "kaf-").await;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", "registration-api-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    // Until every allowed registration's event is seen, then a little
    // longer for anything published after it.
    let mut want: Vec<String> = registered.iter().map(|s| format!("{s}/{s}-1")).collect();
    want.sort();
    let mut settle = None;
    tokio::time::timeout(DEADLINE, async {
        loop {
            if settle.is_some_and(|t: tokio::time::Instant| {
                t.elapsed() > std::time::Duration::from_secs(1)
            }) {
                break;
            }
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(200), consumer.recv()).await;
            if let Ok(Ok(m)) = next
                && let Some(k) = m.key()
            {
                keys.insert(String::from_utf8_lossy(k).into_owned());
            }
            if settle.is_none() && want.iter().all(|w| keys.contains(w)) {
                settle = Some(tokio::time::Instant::now());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events for {want:?} in time; saw {keys:?}"));
    let ours: Vec<&String> = keys.iter().filter(|k| k.starts_with("kaf-")).collect();
    assert_eq!(ours, want.iter().collect::<Vec<_>>(), "published: {keys:?}");
}
