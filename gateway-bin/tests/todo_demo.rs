//! The TODO demo end to end (examples/todo): the real gateway with
//! `examples/todo/gateway.toml` and the three services - auth (Rust,
//! service-sdk), todos (Python, adapters/python), activity (Go,
//! adapters/go) - then, over HTTP on the public listener: sign up, log in,
//! todos under a verified token, refusals (no token, forged tokens, another
//! user's todo, a spoofed `x-auth-subject`), the login rate limit, the
//! response cache on `/todos/stats`, refresh-token rotation and logout, and
//! the admin view of the three services.
//!
//! Needs `cargo build -p todo-auth`, Go 1.26+ (the activity service is
//! built here with `go build`) and the Python gRPC packages of
//! `scripts/install-deps.sh python`; `scripts/todo-demo.sh test` does all
//! three, then runs this test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{DEADLINE, GatewayProcess, eventually_within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Spawns a service and waits for its `READY <addr>` line.
async fn start_ready(what: &str, mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("READY ") {
                return;
            }
        }
        panic!("{what} exited before READY");
    })
    .await
    .unwrap_or_else(|_| panic!("{what} ready in time"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A port the kernel just handed out and released: the gateway's public
/// listener must be known before it starts, because the configuration's
/// `jwks_url` points at it (the JWKS is fetched through the gateway).
fn candidate_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let vals: Vec<u32> = s
        .bytes()
        .map(|c| B64.iter().position(|&b| b == c).expect("base64url") as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let n = chunk.iter().fold(0u32, |n, v| (n << 6) | v) << (6 * (4 - chunk.len()));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// `token` with its payload edited by `edit`, the signature kept: what an
/// attacker holding a valid token can make without the key.
fn tamper(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token");
    let mut claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    edit(&mut claims);
    let payload = b64url_encode(&serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// An unsigned token (`alg: none`) with the given claims.
fn unsigned(claims: &Value) -> String {
    let header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!(
        "{header}.{}.",
        b64url_encode(&serde_json::to_vec(claims).unwrap())
    )
}

struct Demo {
    gw: GatewayProcess,
    _children: Vec<Child>,
    _tmp: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._tmp);
    }
}

async fn start_demo() -> Demo {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap();
    let auth_bin = bin_dir.join("todo-auth");
    assert!(
        auth_bin.exists(),
        "build the auth service first: cargo build -p todo-auth (scripts/todo-demo.sh test does)"
    );
    let tmp = std::env::temp_dir().join(format!("gw-todo-demo-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // The Go service, built from its module (the Go build cache keeps it quick).
    let activity_bin = tmp.join("activity");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&activity_bin)
        .arg(".")
        .current_dir(repo().join("examples/todo/activity"))
        .status()
        .await
        .expect("run `go build` (Go 1.26+ must be installed)");
    assert!(built.success(), "go build examples/todo/activity");

    // The shipped configuration, with the JWKS URL on this test's public port.
    let shipped = std::fs::read_to_string(repo().join("examples/todo/gateway.toml")).unwrap();
    let jwks = "http://127.0.0.1:8080/auth/.well-known/jwks.json";
    assert!(shipped.contains(jwks), "the shipped jwks_url changed");
    let public = format!("127.0.0.1:{}", candidate_port());
    let config = tmp.join("gateway.toml");
    std::fs::write(
        &config,
        shipped.replace(jwks, &format!("http://{public}/auth/.well-known/jwks.json")),
    )
    .unwrap();
    let gw = GatewayProcess::start_at(
        [
            public,
            "127.0.0.1:0".into(),
            "127.0.0.1:0".into(),
            "127.0.0.1:0".into(),
        ],
        &["--config", config.to_str().unwrap()],
        &[],
    )
    .await;
    let reg = gw.registration_url();

    let mut auth = Command::new(&auth_bin);
    auth.args(["--gateway", &reg]);
    let mut todos = Command::new("python3");
    todos
        .arg(repo().join("examples/todo/todos/app.py"))
        .args(["--gateway", &reg, "--activity-via"])
        .arg(format!("http://{}", gw.internal));
    let mut activity = Command::new(&activity_bin);
    activity.args(["-gateway", &reg]);
    let children = vec![
        start_ready("auth", auth).await,
        start_ready("todos", todos).await,
        start_ready("activity", activity).await,
    ];
    for s in ["auth", "todos", "activity"] {
        gw.wait_routable(s, 1).await;
    }
    Demo {
        gw,
        _children: children,
        _tmp: tmp,
    }
}

async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_app_through_the_gateway() {
    let demo = start_demo().await;
    let gw = &demo.gw;
    let http = &gw.http;
    let post = |path: &str, body: Value| http.post(gw.url(path)).json(&body).send();

    // Sign up two users; a taken name is refused by the auth service.
    for name in ["alice", "bob"] {
        let (s, v) = json_of(
            post(
                "/auth/register",
                json!({"username": name, "password": "correct horse"}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = json_of(
        post(
            "/auth/register",
            json!({"username": "alice", "password": "another one"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::CONFLICT, &json!("username_taken"))
    );

    // Log in (2 of the 5 logins a minute the policy allows).
    let mut sessions = Vec::new();
    for name in ["alice", "bob"] {
        let (s, v) = json_of(
            post(
                "/auth/login",
                json!({"username": name, "password": "correct horse"}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        sessions.push(v);
    }
    let (alice, bob) = (&sessions[0], &sessions[1]);
    let alice_token = alice["access_token"].as_str().unwrap().to_owned();
    let bob_token = bob["access_token"].as_str().unwrap().to_owned();
    let alice_id = alice["user_id"].as_str().unwrap().to_owned();

    // The gateway fetches the JWKS through its own public listener once auth
    // has registered (retrying): wait until alice's token is accepted.
    eventually_within(
        "alice's token accepted (JWKS fetched)",
        Duration::from_secs(30),
        || {
            let req = http.get(gw.url("/todos")).bearer_auth(&alice_token);
            async move { (req.send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;

    // A todo, under alice's verified identity.
    let resp = http
        .post(gw.url("/todos"))
        .bearer_auth(&alice_token)
        .json(&json!({"title": "write the demo"}))
        .send()
        .await
        .unwrap();
    let (s, todo) = json_of(resp).await;
    assert_eq!(s, 201, "{todo}");
    let id = todo["id"].as_u64().unwrap();
    let (s, list) = json_of(
        http.get(gw.url("/todos"))
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list["todos"][0]["title"], "write the demo", "{list}");
    let (s, done) = json_of(
        http.patch(gw.url(&format!("/todos/{id}")))
            .bearer_auth(&alice_token)
            .json(&json!({"done": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &done["done"]), (StatusCode::OK, &json!(true)), "{done}");

    // No token: the gateway refuses before todos is called.
    let resp = http.get(gw.url("/todos")).send().await.unwrap();
    assert!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        resp.headers()
    );
    let (s, v) = json_of(resp).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized")),
        "{v}"
    );
    // A client's own x-auth-subject is no identity.
    let (s, v) = json_of(
        http.get(gw.url("/todos"))
            .header("x-auth-subject", &alice_id)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401, "{v}");

    // Forged tokens: alice's claims made bob's (signature kept), an unsigned
    // token, a token for another audience, garbage.
    let bob_id = bob["user_id"].as_str().unwrap();
    let forged = [
        tamper(&alice_token, |c| c["sub"] = json!(bob_id)),
        tamper(&alice_token, |c| c["exp"] = json!(u32::MAX)),
        unsigned(
            &json!({"iss": "todo-auth", "aud": "todo-api", "sub": alice_id, "scope": "todos", "exp": u32::MAX}),
        ),
        "not.a.jwt".to_owned(),
    ];
    for token in &forged {
        let (s, v) = json_of(
            http.get(gw.url("/todos"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (StatusCode::UNAUTHORIZED, &json!("unauthorized")),
            "forged {token}: {v}"
        );
    }

    // Bob sees none of alice's todos, even naming her in x-auth-subject.
    let (s, v) = json_of(
        http.get(gw.url("/todos"))
            .bearer_auth(&bob_token)
            .header("x-auth-subject", &alice_id)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &v["todos"]), (StatusCode::OK, &json!([])), "{v}");
    let resp = http
        .get(gw.url(&format!("/todos/{id}")))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = http
        .delete(gw.url(&format!("/todos/{id}")))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The Go service got alice's changes from todos, through the gateway's
    // internal listener with alice's token relayed; bob's feed is empty.
    eventually_within("alice's activity", Duration::from_secs(10), || {
        let req = http.get(gw.url("/activity")).bearer_auth(&alice_token);
        async move {
            let v: Value = req.send().await.ok()?.json().await.ok()?;
            let actions: Vec<&str> = v["activity"]
                .as_array()?
                .iter()
                .filter_map(|e| e["action"].as_str())
                .collect();
            (actions.contains(&"created") && actions.contains(&"completed")).then_some(())
        }
    })
    .await;
    let (s, v) = json_of(
        http.get(gw.url("/activity"))
            .bearer_auth(&bob_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, &v["activity"]), (StatusCode::OK, &json!([])), "{v}");

    // Public and cacheable: the second read is the gateway's.
    let first = http.get(gw.url("/todos/stats")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        first.headers().contains_key("etag"),
        "{:?}",
        first.headers()
    );
    assert_eq!(
        first.headers().get("x-cache").map(|v| v.to_str().unwrap()),
        Some("MISS")
    );
    let (_, stats) = json_of(first).await;
    assert_eq!(
        (stats["users"].as_u64(), stats["done"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    let second = http.get(gw.url("/todos/stats")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.headers().get("x-cache").map(|v| v.to_str().unwrap()),
        Some("HIT"),
        "{:?}",
        second.headers()
    );
    assert_eq!(json_of(second).await.1, stats);

    // Refresh rotates: the new pair works, the spent refresh token does not.
    let old_refresh = alice["refresh_token"].as_str().unwrap();
    let (s, renewed) = json_of(
        post("/auth/refresh", json!({"refresh_token": old_refresh}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{renewed}");
    let resp = http
        .get(gw.url("/todos"))
        .bearer_auth(renewed["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, v) = json_of(
        post("/auth/refresh", json!({"refresh_token": old_refresh}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("invalid_refresh_token"))
    );
    // Logout revokes the live one.
    let new_refresh = renewed["refresh_token"].as_str().unwrap();
    let resp = post("/auth/logout", json!({"refresh_token": new_refresh}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (s, v) = json_of(
        post("/auth/refresh", json!({"refresh_token": new_refresh}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("invalid_refresh_token"))
    );

    // Hammering the login: 5 a minute per client, then 429 from the gateway.
    let mut refused = None;
    for _ in 0..10 {
        let resp = post(
            "/auth/login",
            json!({"username": "alice", "password": "correct horse"}),
        )
        .await
        .unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
    }
    let resp = refused.expect("429 within 10 logins");
    assert!(resp.headers().contains_key("retry-after"));
    let (_, v) = json_of(resp).await;
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    // Other auth routes are not limited.
    let resp = post("/auth/refresh", json!({"refresh_token": "nope"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The admin listener lists the three services, each with an instance.
    let v: Value = http
        .get(format!("http://{}/admin/services", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["routable_instances"].as_u64() == Some(1))
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["activity", "auth", "todos"], "{v}");
}
