//! TLS end to end: the real `gateway` binary with certificates made here
//! (rcgen), HTTPS over HTTP/1.1 and HTTP/2 (ALPN) on the public listener,
//! the registration API over HTTPS (gRPC from the SDK, JSON from curl),
//! certificate reload without a restart, and backends over TLS and mTLS.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::any;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, admin_view, eventually};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A throw-away CA that issues leaf certificates into a temp directory.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gw-tls-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let pki = Self {
            dir,
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        };
        pki.write("ca.pem", &pki.ca_pem);
        pki
    }

    /// A leaf for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    fn leaf(&self, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        // Write then rename: the gateway never reads a half-written file.
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca_path(&self) -> PathBuf {
        self.path("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(pki: &Pki, toml: &str) -> PathBuf {
    pki.write("gateway.toml", toml)
}

/// Echoes the request's headers as JSON.
fn echo_router() -> Router {
    Router::new().fallback(any(|headers: HeaderMap, body: Bytes| async move {
        let hs: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        json!({"headers": hs, "body": String::from_utf8_lossy(&body)}).to_string()
    }))
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(addr: std::net::SocketAddr, ca_pem: &str, alpn: &[&[u8]]) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// The DER of the certificate the server presented.
fn peer_leaf(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// GET over an established TLS connection, with the protocol ALPN chose.
async fn get(tls: Tls, path: &str) -> (http::StatusCode, http::Version, Value) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, version, v)
}

fn sdk_gateway_tls(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
}

fn tool(name: &str) -> bool {
    let found = std::process::Command::new("which")
        .arg(name)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        println!("skipped: `{name}` is not installed");
    }
    found
}

async fn run(cmd: &str, args: &[&str], stdin: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(support::DEADLINE, child.wait_with_output())
        .await
        .expect("tool finished in time")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn tls_listener_config(pki: &Pki) -> PathBuf {
    let (cert, key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let c = pki.write("server.pem", &cert);
    let k = pki.write("server-key.pem", &key);
    write_config(
        pki,
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nreload_interval = \"50ms\"\nhandshake_timeout = \"2s\"\n",
            c.display().to_string(),
            k.display().to_string()
        ),
    )
}

/// HTTPS on the public listener over h2 and HTTP/1.1 (ALPN), the backend
/// registered over gRPC on the HTTPS registration listener, and a new
/// certificate served without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_h1_h2_registration_and_reload() {
    let pki = Pki::new("listen");
    let config = tls_listener_config(&pki);
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()], &[]).await;
    let reg = format!("https://{}", gw.registration);
    let _echo = BackendHandle::start("tlsecho", echo_router(), Some(&reg), |b| {
        b.gateway_tls(sdk_gateway_tls(&pki.ca_pem))
    })
    .await;
    gw.wait_routable("tlsecho", 1).await;

    // HTTP/2 chosen by ALPN; the backend is told the request was https.
    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let first_leaf = peer_leaf(&tls);
    assert_eq!(
        first_leaf,
        der_of(&std::fs::read_to_string(pki.path("server.pem")).unwrap())
    );
    let (status, version, v) = get(tls, "/tlsecho/a").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");

    // HTTP/1.1 when the client offers only that.
    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, version, v) = get(tls, "/tlsecho/b").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");

    // Plain HTTP on a TLS listener gets no HTTP answer.
    let plain = gw.http.get(gw.url("/tlsecho/c")).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A new pair in the files: served to new connections, same process.
    let pid = gw.child.id();
    let (cert, key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    pki.write("server-key.pem", &key);
    pki.write("server.pem", &cert);
    let new_leaf = der_of(&cert);
    eventually("the new certificate is served", || {
        let (gw, ca, new_leaf) = (&gw, &pki.ca_pem, &new_leaf);
        async move {
            let tls = tls_connect(gw.public, ca, &[b"h2"]).await;
            (peer_leaf(&tls) == *new_leaf).then_some(())
        }
    })
    .await;
    assert_eq!(gw.child.id(), pid, "no restart");
    // A broken file later on keeps the last good pair in service.
    pki.write("server.pem", "not a certificate");
    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"h2"]).await;
    assert_eq!(peer_leaf(&tls), new_leaf);
    let (status, _, _) = get(tls, "/tlsecho/d").await;
    assert_eq!(status, 200);
}

/// curl and openssl s_client as clients: ALPN h2 and a verified chain,
/// HTTP/1.1 and HTTP/2 through the public listener, and a JSON
/// registration over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_speak_to_the_tls_listeners() {
    let (has_curl, has_openssl) = (tool("curl"), tool("openssl"));
    if !has_curl && !has_openssl {
        return;
    }
    let pki = Pki::new("tools");
    let config = tls_listener_config(&pki);
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()], &[]).await;
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();

    if has_openssl {
        for (listener, addr) in [("public", gw.public), ("registration", gw.registration)] {
            let (_, out) = run(
                "openssl",
                &[
                    "s_client",
                    "-connect",
                    &addr.to_string(),
                    "-servername",
                    "localhost",
                    "-alpn",
                    "h2,http/1.1",
                    "-CAfile",
                    ca,
                ],
                "",
            )
            .await;
            assert!(out.contains("ALPN protocol: h2"), "{listener}: {out}");
            assert!(
                out.contains("Verify return code: 0 (ok)"),
                "{listener}: {out}"
            );
        }
    }
    if !has_curl {
        return;
    }
    let backend = BackendHandle::start("curled", echo_router(), None, |b| b).await;
    let body = json!({"service": "curled", "instance_id": "curled-1", "address": backend.addr.to_string()});
    let (ok, out) = run(
        "curl",
        &[
            "-sS",
            "--fail-with-body",
            "--cacert",
            ca,
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
            &format!("https://{}/v1/registrations", gw.registration),
        ],
        &body.to_string(),
    )
    .await;
    assert!(ok, "JSON registration over HTTPS: {out}");
    gw.wait_routable("curled", 1).await;
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out) = run(
            "curl",
            &[
                "-sS",
                "--fail-with-body",
                "--cacert",
                ca,
                flag,
                "-w",
                "\n%{http_version}",
                &format!("https://{}/curled/x", gw.public),
            ],
            "",
        )
        .await;
        assert!(ok, "{flag}: {out}");
        let (json_body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, want, "{out}");
        let v: Value = serde_json::from_str(json_body).unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{out}");
    }
    // The admin listener stays plain HTTP unless `[tls] admin = true`.
    assert_eq!(
        gw.http
            .get(format!("http://{}/healthz", gw.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Backends over TLS and over mTLS: the gateway dials https with its CA
/// bundle and client certificate, health checks included; without the
/// client certificate an mTLS backend is not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_and_mtls() {
    let pki = Pki::new("upstream");
    let (server_cert, server_key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = pki.leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let cc = pki.write("client.pem", &client_cert);
    let ck = pki.write("client-key.pem", &client_key);
    let with_client = write_config(
        &pki,
        &format!(
            "[upstream_tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.ca_path().display().to_string(),
            cc.display().to_string(),
            ck.display().to_string()
        ),
    );
    let gw = GatewayProcess::start(&["--config", with_client.to_str().unwrap()], &[]).await;
    // The second gateway trusts the CA but has no client certificate.
    let ca_only = pki.write(
        "ca-only.toml",
        &format!(
            "[upstream_tls]\nca = {:?}\n",
            pki.ca_path().display().to_string()
        ),
    );
    let gw2 = GatewayProcess::start(&["--config", ca_only.to_str().unwrap()], &[]).await;

    let identity = Identity::from_pem(&server_cert, &server_key);
    let tls = ServerTlsConfig::new().identity(identity.clone());
    let mtls = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let reg = gw.registration_url();
    let tls_backend =
        BackendHandle::start("tlsback", echo_router(), Some(&reg), |b| b.tls(tls)).await;
    let mtls_backend = BackendHandle::start("mtlsback", echo_router(), Some(&reg), |b| {
        b.tls(mtls)
            .registration(|r| r.tls_server_name = "localhost".into())
    })
    .await;
    gw.wait_routable("tlsback", 1).await;
    gw.wait_routable("mtlsback", 1).await;

    for path in ["/tlsback/x", "/mtlsback/y"] {
        let resp = gw.http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}: {}", resp.text().await.unwrap());
    }
    // The gRPC health check reached both over TLS.
    eventually("both backends pass their TLS health checks", || {
        let gw = &gw;
        async move {
            let v = admin_view(gw).await;
            let passing = v["instances"]
                .as_array()?
                .iter()
                .filter(|i| {
                    let s = &i["registration"]["service"];
                    (s == "tlsback" || s == "mtlsback") && i["health"] == "passing"
                })
                .count();
            (passing == 2).then_some(())
        }
    })
    .await;

    // The backend's certificate is verified: a name it does not carry fails.
    let body = json!({"service": "wrongname", "instance_id": "w-1", "address": tls_backend.addr.to_string(), "tls": true, "tls_server_name": "wrong.example", "health": {"kind": "ttl"}, "lease_ms": 600000});
    support::register_json(&gw, &body).await;
    gw.wait_routable("wrongname", 1).await;
    let resp = gw.http.get(gw.url("/wrongname/x")).send().await.unwrap();
    assert!(
        resp.status().is_server_error(),
        "a certificate for another name was accepted: {}",
        resp.status()
    );

    // The same mTLS backend registered with the gateway that has no client
    // certificate: its calls cannot get through.
    let body = json!({"service": "mtlsonly", "instance_id": "m-1", "address": mtls_backend.addr.to_string(), "tls": true, "health": {"kind": "ttl"}, "lease_ms": 600000});
    support::register_json(&gw2, &body).await;
    gw2.wait_routable("mtlsonly", 1).await;
    let resp = gw2.http.get(gw2.url("/mtlsonly/z")).send().await.unwrap();
    assert!(
        resp.status().is_server_error(),
        "an mTLS backend answered a gateway without a client certificate: {}",
        resp.status()
    );
    // ...and the registration listing shows the field back.
    let v = support::get_json(
        &gw2.http,
        &format!(
            "{}/v1/registrations?service=mtlsonly",
            gw2.registration_url()
        ),
    )
    .await;
    assert_eq!(v["instances"][0]["registration"]["tls"], true, "{v}");
}

/// A bad certificate file stops start-up, naming the file; a TLS
/// registration on a gateway without `[upstream_tls]` is refused with a
/// 400 naming the field (it could never be dialled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_named() {
    let pki = Pki::new("bad");
    pki.write("garbage.pem", "nope");
    let config = write_config(
        &pki,
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            pki.path("garbage.pem").display().to_string(),
            pki.path("garbage.pem").display().to_string()
        ),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--public", "127.0.0.1:0", "--internal", "127.0.0.1:0"])
        .args(["--registration", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.pem"), "{err}");

    let gw = GatewayProcess::start(&[], &[]).await;
    let body = json!({"service": "wanttls", "instance_id": "w-1", "address": "127.0.0.1:1", "tls": true, "health": {"kind": "ttl"}, "lease_ms": 600000});
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["field"], "registration.tls", "{err}");
    // Over gRPC: INVALID_ARGUMENT naming the field, as registry.proto says.
    let mut client =
        proto::v1::registry_service_client::RegistryServiceClient::connect(gw.registration_url())
            .await
            .unwrap();
    let err = client
        .register(proto::v1::RegisterRequest {
            registration: Some(proto::v1::Registration {
                service: "wanttls".into(),
                instance_id: "w-3".into(),
                address: "127.0.0.1:3".into(),
                tls: true,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("registration.tls"),
        "{}",
        err.message()
    );
    // A plain sibling is registered and routed; the refused one is not there.
    let body = json!({"service": "wanttls", "instance_id": "w-2", "address": "127.0.0.1:2", "health": {"kind": "ttl"}, "lease_ms": 600000});
    support::register_json(&gw, &body).await;
    gw.wait_routable("wanttls", 1).await;
    let v = admin_view(&gw).await;
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "wanttls")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(svc["routable_instances"], 1, "{v}");
}

/// WebSocket over HTTP/2 over TLS (RFC 8441 extended CONNECT after ALPN
/// h2), relayed to an SDK WebSocket handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_h2_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use service_sdk::routing::get as route_get;
    use service_sdk::ws::{WebSocket, WebSocketUpgrade};
    use tokio_tungstenite::tungstenite::Message;

    let pki = Pki::new("ws");
    let config = tls_listener_config(&pki);
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()], &[]).await;
    let app = Router::new().route(
        "/wss/echo",
        route_get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket: WebSocket| async move {
                while let Some(Ok(m)) = socket.recv().await {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
            })
        }),
    );
    let reg = format!("https://{}", gw.registration);
    let _b = BackendHandle::start("wss", app, Some(&reg), |b| {
        b.gateway_tls(sdk_gateway_tls(&pki.ca_pem))
    })
    .await;
    gw.wait_routable("wss", 1).await;

    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::connect("https://localhost/wss/echo")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2 over tls")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("over h2 over tls")
    );
    ws.close(None).await.unwrap();
}

/// A client that connects and never starts the handshake is closed after
/// `tls.handshake_timeout`; other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new("stall");
    let (cert, key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let c = pki.write("server.pem", &cert);
    let k = pki.write("server-key.pem", &key);
    let config = write_config(
        &pki,
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"300ms\"\n",
            c.display().to_string(),
            k.display().to_string()
        ),
    );
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()], &[]).await;
    let mut stalled = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let started = std::time::Instant::now();
    // Served while the first one stalls: the accept loop does not wait.
    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"h2"]).await;
    let (status, _, _) = get(tls, "/nothing-here").await;
    assert_eq!(status, 404);
    let mut buf = Vec::new();
    let n = tokio::time::timeout(support::DEADLINE, stalled.read_to_end(&mut buf))
        .await
        .expect("the gateway closed the stalled connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent before a handshake");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "closed after the timeout, not at once: {:?}",
        started.elapsed()
    );
}

/// SIGHUP reloads the certificate at once, long before the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let pki = Pki::new("hup");
    let (cert, key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let c = pki.write("server.pem", &cert);
    let k = pki.write("server-key.pem", &key);
    let config = write_config(
        &pki,
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nreload_interval = \"1h\"\n",
            c.display().to_string(),
            k.display().to_string()
        ),
    );
    let gw = GatewayProcess::start(&["--config", config.to_str().unwrap()], &[]).await;
    let tls = tls_connect(gw.public, &pki.ca_pem, &[b"h2"]).await;
    assert_eq!(peer_leaf(&tls), der_of(&cert));
    let (cert, key) = pki.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    pki.write("server-key.pem", &key);
    pki.write("server.pem", &cert);
    let pid = gw.child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let new_leaf = der_of(&cert);
    eventually("SIGHUP reloaded the certificate", || {
        let (gw, ca, new_leaf) = (&gw, &pki.ca_pem, &new_leaf);
        async move {
            let tls = tls_connect(gw.public, ca, &[b"h2"]).await;
            (peer_leaf(&tls) == *new_leaf).then_some(())
        }
    })
    .await;
    assert!(gw.child.id().is_some(), "still the same process");
}
