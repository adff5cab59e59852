//! `GET /admin/replicas`: every replica's view side by side. The gateway
//! fetches each peer's `/admin/services` itself (the browser talks to one
//! admin listener only: no CORS, no peer reachable from the operator's
//! laptop needed), concurrently, each with `[admin] peer_timeout`; a peer
//! that does not answer in time is listed as down with the error.
//!
//! Peers are the static `[admin] peers` list (`--admin-peer`): the same
//! list on every replica, like HAProxy's server list; this replica finds
//! itself in it by node id and is shown once, from memory. With `[consul]`,
//! also whoever wrote its admin URL under [`consul::PREFIX`] in Consul's KV
//! store ([`consul::ConsulPeers`]): a key per node id, not a Consul service,
//! which the registry would read as a backend.
//!
//! The client is a plain HTTP/1.1 request over hyper (`http://` only): the
//! admin listener serves TLS only when `[tls] admin` is set, and a gateway
//! built without the `consul` feature has no reqwest.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

/// The most of a peer's answer read (a peer with thousands of instances
/// answers in a few MB; more than this is not a view a column can show).
const MAX_ANSWER: usize = 16 << 20;

/// One peer's `/admin/services`, or why there is none.
pub(crate) async fn fetch(url: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, get_services(url)).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let ms = (ms * 10.0).round() / 10.0;
    match result {
        Ok(Ok(view)) => json!({"url": url, "up": true, "latency_ms": ms, "view": view}),
        Ok(Err(e)) => json!({"url": url, "up": false, "latency_ms": ms, "error": e}),
        Err(_) => json!({"url": url, "up": false, "latency_ms": ms,
            "error": format!("no answer within {} ms", timeout.as_millis())}),
    }
}

async fn get_services(url: &str) -> Result<Value, String> {
    let (status, body) = call(url, http::Method::GET, "/admin/services", Bytes::new()).await?;
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a services view: {e}"))
}

/// `PUT <peer>/admin/canary/<service>` with `body`, within `timeout`: the
/// peer's answer (its status and JSON), or why there is none.
pub(crate) async fn put_canary(
    url: &str,
    service: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(http::StatusCode, Value), String> {
    let path = format!(
        "/admin/canary/{}",
        percent_encoding::utf8_percent_encode(service, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, answer) = tokio::time::timeout(timeout, call(url, http::Method::PUT, &path, body))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))??;
    let v = serde_json::from_slice(&answer).map_err(|e| format!("answered {status}: {e}"))?;
    Ok((status, v))
}

/// One HTTP/1.1 exchange with a peer's admin listener: the status and at
/// most [`MAX_ANSWER`] bytes of the answer.
async fn call(
    url: &str,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), String> {
    let base: http::Uri = url.parse().map_err(|e| format!("bad peer URL: {e}"))?;
    if base.scheme_str() != Some("http") {
        return Err("only http:// peers are supported".into());
    }
    let authority = base
        .authority()
        .ok_or("peer URL has no host")?
        .as_str()
        .to_owned();
    let port = base.port_u16().unwrap_or(80);
    let host = base.host().unwrap_or_default().trim_matches(['[', ']']);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json");
    if !body.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let answer = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    conn.abort();
    Ok((status, answer))
}

/// Discovery of peers through Consul's KV store.
#[cfg(feature = "consul")]
pub mod consul {
    use std::time::Duration;

    use crate::config::ConsulConfig;

    /// Where each gateway writes its admin URL: `PREFIX<node id>`.
    pub const PREFIX: &str = "forwarding-gateway/admin/";

    /// Writes this gateway's admin URL to Consul and reads the others'.
    #[derive(Debug)]
    pub struct ConsulPeers {
        http: reqwest::Client,
        base: String,
        token: Option<String>,
        key: String,
    }

    impl ConsulPeers {
        /// For the agent of `config`, as node `node_id`.
        pub fn new(config: &ConsulConfig, node_id: &str) -> Self {
            let node =
                percent_encoding::utf8_percent_encode(node_id, percent_encoding::NON_ALPHANUMERIC);
            ConsulPeers {
                http: reqwest::Client::new(),
                base: config.address.trim_end_matches('/').to_owned(),
                token: config.token.clone(),
                key: format!("{PREFIX}{node}"),
            }
        }

        fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
            let rb = self
                .http
                .request(method, format!("{}/v1/kv/{path}", self.base))
                .timeout(Duration::from_secs(2));
            match &self.token {
                Some(t) => rb.header("X-Consul-Token", t),
                None => rb,
            }
        }

        /// Writes (or rewrites) this gateway's admin URL.
        pub async fn announce(&self, url: &str) -> Result<(), String> {
            let resp = self
                .request(reqwest::Method::PUT, &self.key)
                .body(url.to_owned())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match resp.status().is_success() {
                true => Ok(()),
                false => Err(format!("Consul answered {}", resp.status())),
            }
        }

        /// Removes this gateway's key (on shutdown).
        pub async fn withdraw(&self) -> Result<(), String> {
            let resp = self
                .request(reqwest::Method::DELETE, &self.key)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match resp.status().is_success() {
                true => Ok(()),
                false => Err(format!("Consul answered {}", resp.status())),
            }
        }

        /// Every announced admin URL.
        pub async fn list(&self) -> Result<Vec<String>, String> {
            let resp = self
                .request(reqwest::Method::GET, &format!("{PREFIX}?recurse=true"))
                .send()
                .await
                .map_err(|e| format!("Consul: {e}"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(Vec::new());
            }
            if !resp.status().is_success() {
                return Err(format!("Consul answered {}", resp.status()));
            }
            #[derive(serde::Deserialize)]
            struct Entry {
                #[serde(rename = "Value")]
                value: Option<String>,
            }
            let entries: Vec<Entry> = resp.json().await.map_err(|e| format!("Consul: {e}"))?;
            Ok(entries
                .into_iter()
                .filter_map(|e| base64_decode(&e.value?))
                .filter_map(|v| String::from_utf8(v).ok())
                .collect())
        }
    }

    /// Standard base64 (Consul's KV values); `None` when malformed.
    pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_that_does_not_answer_is_down_with_the_error() {
        // A bound socket that never accepts: the connection waits in the
        // backlog, so the request times out.
        let quiet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", quiet.local_addr().unwrap());
        let v = fetch(&url, Duration::from_millis(100)).await;
        assert_eq!(v["up"], false);
        assert!(
            v["error"].as_str().unwrap().contains("within 100 ms"),
            "{v}"
        );

        // Nothing listening: refused.
        drop(quiet);
        let v = fetch(&url, Duration::from_secs(2)).await;
        assert_eq!(v["up"], false);
        assert!(v["error"].as_str().unwrap().starts_with("connect"), "{v}");

        let v = fetch("https://127.0.0.1:1", Duration::from_secs(1)).await;
        assert_eq!(v["error"], "only http:// peers are supported");
    }

    #[cfg(feature = "consul")]
    #[test]
    fn base64_as_consul_writes_it() {
        use super::consul::base64_decode;
        assert_eq!(
            base64_decode("aHR0cDovLzEyNy4wLjAuMTo4MDkx").unwrap(),
            b"http://127.0.0.1:8091"
        );
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("a b").is_none());
    }
}
