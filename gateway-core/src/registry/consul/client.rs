//! A small typed Consul client over reqwest: agent registration with checks,
//! TTL passes, and the blocking queries discovery needs.
//!
//! Written here because no maintained crate does agent registration with
//! checks plus blocking health queries on the reqwest 0.13 / hyper 1 stack
//! (`consulrs` and `rs-consul` are on older stacks or lack blocking reads);
//! the surface we need is eight endpoints.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConsulConfig, ConsulConsistency};

/// A Consul call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// Consul could not be reached (connection refused, timeout...).
    #[error("consul unreachable at {url}: {source}")]
    Unreachable {
        /// URL called.
        url: String,
        /// Transport error.
        source: reqwest::Error,
    },
    /// The ACL token was rejected.
    #[error("consul rejected the ACL token ({status}) on {url}: {body}")]
    Forbidden {
        /// URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Consul's message.
        body: String,
    },
    /// Any other non-2xx answer.
    #[error("consul answered {status} on {url}: {body}")]
    Status {
        /// URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Consul's message.
        body: String,
    },
    /// The answer could not be decoded (garbage, truncated).
    #[error("undecodable consul answer from {url}: {reason}")]
    Decode {
        /// URL called.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ConsulError {
    /// Whether retrying later may help (everything but a rejected token).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ConsulError::Forbidden { .. })
    }
}

/// A value from a blocking query with the index to block on next.
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    /// The value.
    pub value: T,
    /// `X-Consul-Index` of the answer.
    pub index: u64,
}

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceRegistration {
    /// Service id, unique on the agent.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata (keys <= 128 chars, values <= 512 chars, <= 64 pairs).
    pub meta: HashMap<String, String>,
    /// Balancing weights.
    pub weights: Weights,
    /// The check Consul runs.
    pub check: AgentCheck,
}

/// Consul's service weights.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while warning.
    pub warning: u32,
}

/// A check definition. Exactly one of `grpc`, `http`, `ttl` is set.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AgentCheck {
    /// Check id (`service:<id>` is Consul's default).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human name.
    pub name: String,
    /// `host:port[/service]` for a grpc.health.v1 check.
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Whether the gRPC check uses TLS.
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "Option::is_none")]
    pub grpc_use_tls: Option<bool>,
    /// Name the agent checks the instance's certificate against (TLS checks).
    #[serde(rename = "TLSServerName", skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// URL for an HTTP check.
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// TTL for a TTL check ("30s").
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Interval ("5s") for grpc/http checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Timeout ("1s") for grpc/http checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Free text; a gateway stamps its write here so that every write
    /// changes the check (and its `ModifyIndex` in `/v1/health/state/any`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Reap the service after critical this long ("1m").
    pub deregister_critical_service_after: String,
    /// Initial status; "critical" so nothing is routed before a check passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    /// The node.
    pub node: Node,
    /// The service instance.
    pub service: CatalogService,
    /// Node and service checks.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A Consul node.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    /// Node name.
    pub node: String,
    /// Node address.
    pub address: String,
}

/// A service instance as Consul stores it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Address ("" = the node's).
    #[serde(default)]
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata.
    #[serde(default)]
    pub meta: Option<HashMap<String, String>>,
    /// Weights.
    #[serde(default)]
    pub weights: Option<Weights>,
}

/// A health check's state.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    /// Check id.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// "passing", "warning" or "critical".
    pub status: String,
    /// Last output.
    #[serde(default)]
    pub output: String,
}

/// One check of `/v1/health/state/any`: enough to tell which services
/// changed since the last read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateCheck {
    /// Node the check runs on.
    pub node: String,
    /// Check id.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// "passing", "warning" or "critical".
    pub status: String,
    /// Service id ("" for a node check).
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// Service name ("" for a node check).
    #[serde(default)]
    pub service_name: String,
    /// Raft index of the check's last change (status, output, definition).
    #[serde(default)]
    pub modify_index: u64,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    consistency: ConsulConsistency,
    datacenter: Option<String>,
}

fn dur(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl ConsulClient {
    /// A client for the agent in `config`.
    pub fn new(config: &ConsulConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(90))
            // Two blocking queries plus a few targeted reads: a constant,
            // small number of connections whatever the number of services.
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            base: config.address.trim_end_matches('/').to_owned(),
            token: config.token.clone(),
            consistency: config.consistency,
            datacenter: config.datacenter.clone(),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
    ) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{}", self.base, path);
        let mut rb = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = &self.token {
            rb = rb.header("X-Consul-Token", t);
        }
        (url, rb)
    }

    async fn send(
        &self,
        url: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ConsulError> {
        let resp = rb.send().await.map_err(|source| ConsulError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(512).collect();
        // Consul answers 403 "Permission denied" / "ACL not found" for bad tokens.
        if status == 403 || (status == 401) {
            return Err(ConsulError::Forbidden {
                url: url.to_owned(),
                status,
                body,
            });
        }
        Err(ConsulError::Status {
            url: url.to_owned(),
            status,
            body,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        url: &str,
        resp: reqwest::Response,
    ) -> Result<T, ConsulError> {
        let bytes = resp.bytes().await.map_err(|e| ConsulError::Decode {
            url: url.to_owned(),
            reason: format!("body: {e}"),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    fn read_params(&self, index: u64, wait: Duration) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if index > 0 {
            q.push(("index", index.to_string()));
            q.push(("wait", dur(wait)));
        }
        if let Some(dc) = &self.datacenter {
            q.push(("dc", dc.clone()));
        }
        match self.consistency {
            ConsulConsistency::Default => {}
            ConsulConsistency::Consistent => q.push(("consistent", String::new())),
            ConsulConsistency::Stale => q.push(("stale", String::new())),
        }
        q
    }

    /// Client timeout for a blocking query: longer than the wait, including
    /// Consul's own jitter of up to wait/16.
    fn blocking_timeout(wait: Duration) -> Duration {
        wait + wait / 16 + Duration::from_secs(5)
    }

    fn index_of(url: &str, resp: &reqwest::Response) -> Result<u64, ConsulError> {
        resp.headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ConsulError::Decode {
                url: url.to_owned(),
                reason: "missing or invalid X-Consul-Index header".into(),
            })
    }

    /// `GET /v1/agent/self`: proves the agent answers and the token is
    /// accepted (needs `agent:read`).
    pub async fn agent_self(&self) -> Result<serde_json::Value, ConsulError> {
        let (url, rb) = self.request(
            reqwest::Method::GET,
            "/v1/agent/self",
            Duration::from_secs(5),
        );
        let resp = self.send(&url, rb).await?;
        Self::json(&url, resp).await
    }

    /// `PUT /v1/agent/service/register` (replaces an existing id).
    pub async fn register(&self, reg: &AgentServiceRegistration) -> Result<(), ConsulError> {
        let (url, rb) = self.request(
            reqwest::Method::PUT,
            "/v1/agent/service/register?replace-existing-checks=true",
            Duration::from_secs(10),
        );
        self.send(&url, rb.json(reg)).await.map(|_| ())
    }

    /// `PUT /v1/agent/service/deregister/<id>`; `Ok(false)` when unknown.
    pub async fn deregister(&self, id: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        let (url, rb) = self.request(reqwest::Method::PUT, &path, Duration::from_secs(10));
        match self.send(&url, rb).await {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(ConsulError::Status {
                status: 500, body, ..
            }) if body.contains("Unknown service") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/agent/service/<id>`: whether the agent has the service.
    pub async fn has_service(&self, id: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/agent/service/{}", encode(id));
        let (url, rb) = self.request(reqwest::Method::GET, &path, Duration::from_secs(5));
        match self.send(&url, rb).await {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/agent/health/service/id/<id>?format=text`: the aggregated
    /// status of the service's checks on this agent (`passing`, `warning`,
    /// `critical`, `maintenance`); `None` when the agent does not have it.
    pub async fn agent_service_status(&self, id: &str) -> Result<Option<String>, ConsulError> {
        let path = format!("/v1/agent/health/service/id/{}?format=text", encode(id));
        let (url, rb) = self.request(reqwest::Method::GET, &path, Duration::from_secs(5));
        match self.send(&url, rb).await {
            Ok(resp) => Ok(Some(
                resp.text().await.unwrap_or_default().trim().to_owned(),
            )),
            // 429 = warning, 503 = critical (or maintenance).
            Err(ConsulError::Status {
                status: 429 | 503,
                body,
                ..
            }) => Ok(Some(body.trim().to_owned())),
            Err(ConsulError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/agent/check/pass/<check id>`; `Ok(false)` when unknown.
    pub async fn pass_ttl(&self, check_id: &str) -> Result<bool, ConsulError> {
        let path = format!("/v1/agent/check/pass/{}", encode(check_id));
        let (url, rb) = self.request(reqwest::Method::PUT, &path, Duration::from_secs(5));
        match self.send(&url, rb).await {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(ConsulError::Status {
                status: 500, body, ..
            }) if body.contains("Unknown check")
                || body.contains("does not have associated TTL") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/catalog/services` (blocking when `index > 0`): name -> tags.
    pub async fn services(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<HashMap<String, Vec<String>>>, ConsulError> {
        let (url, rb) = self.request(
            reqwest::Method::GET,
            "/v1/catalog/services",
            Self::blocking_timeout(wait),
        );
        let resp = self
            .send(&url, rb.query(&self.read_params(index, wait)))
            .await?;
        let index = Self::index_of(&url, &resp)?;
        let value: HashMap<String, Option<Vec<String>>> = Self::json(&url, resp).await?;
        Ok(Indexed {
            value: value
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            index,
        })
    }

    /// `GET /v1/health/service/<name>` (blocking when `index > 0`): every
    /// instance with its node and service checks.
    pub async fn health(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ConsulError> {
        let path = format!("/v1/health/service/{}", encode(name));
        let (url, rb) = self.request(reqwest::Method::GET, &path, Self::blocking_timeout(wait));
        let resp = self
            .send(&url, rb.query(&self.read_params(index, wait)))
            .await?;
        let index = Self::index_of(&url, &resp)?;
        let value: Option<Vec<ServiceEntry>> = Self::json(&url, resp).await?;
        Ok(Indexed {
            value: value.unwrap_or_default(),
            index,
        })
    }
}

impl ConsulClient {
    /// `GET /v1/health/state/any` (blocking when `index > 0`): every check
    /// in the datacenter. Its index moves on any check or registration
    /// change.
    pub async fn health_state(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<StateCheck>>, ConsulError> {
        let (url, rb) = self.request(
            reqwest::Method::GET,
            "/v1/health/state/any",
            Self::blocking_timeout(wait),
        );
        let resp = self
            .send(&url, rb.query(&self.read_params(index, wait)))
            .await?;
        let index = Self::index_of(&url, &resp)?;
        let value: Option<Vec<StateCheck>> = Self::json(&url, resp).await?;
        Ok(Indexed {
            value: value.unwrap_or_default(),
            index,
        })
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Consul's rules for the next blocking index: reset to 0 when it went
/// backwards (a snapshot restore or a new cluster), never below 1 after the
/// first read (index 0 would not block and would spin).
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), 1, "clamped to at least 1");
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 10), 10, "a return is not a change");
        assert_eq!(next_index(10, 3), 0, "reset when it goes backwards");
    }

    #[test]
    fn blocking_timeout_exceeds_wait_and_jitter() {
        let w = Duration::from_secs(60);
        assert!(ConsulClient::blocking_timeout(w) > w + w / 16);
    }

    #[test]
    fn health_entries_decode_with_nulls() {
        let raw = r#"[{"Node":{"Node":"n","Address":"127.0.0.1"},"Service":{"ID":"a:1","Service":"a","Tags":null,"Address":"","Port":5,"Meta":null,"Weights":{"Passing":1,"Warning":1}},"Checks":[{"CheckID":"serfHealth","Status":"passing","Output":""}]}]"#;
        let v: Vec<ServiceEntry> = serde_json::from_str(raw).unwrap();
        assert_eq!(v[0].service.port, 5);
        assert!(serde_json::from_str::<Vec<ServiceEntry>>(r#"[{"Node":"#).is_err());
    }
}
