//! What every request on every listener shares: the balancer, the registry
//! to tell about unreachable services, the limits and the drain signal.

use std::sync::Arc;

use ipnet::IpNet;

use crate::balance::Balancer;
use crate::config::{LimitsConfig, TimeoutConfig};
use crate::registry::Registry;

/// What every request on every listener shares.
pub struct Shared {
    /// This node's id.
    pub node_id: Arc<str>,
    /// Instance selection.
    pub balancer: Arc<Balancer>,
    /// Source of truth, told when a service looks unreachable.
    pub registry: Arc<dyn Registry>,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// Peers whose forwarded headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Cancelled when the gateway starts draining: WebSockets are closed
    /// with 1001 and server-sent event streams end, so their clients
    /// reconnect to another replica; other streams get the drain grace.
    pub draining: tokio_util::sync::CancellationToken,
    /// WebSocket relays: upgraded connections leave hyper's graceful
    /// shutdown, so the drain waits for these (their close 1001) itself.
    pub relays: tokio_util::task::TaskTracker,
    /// `[access_log]`: `None` when off (the request path then takes one
    /// branch and allocates nothing for it).
    pub access_log: Option<crate::access_log::AccessLog>,
    /// `[[rate_limits]]`: `None` when no policy is configured (one branch
    /// on the request path).
    pub rate_limits: Option<Arc<crate::ratelimit::RateLimits>>,
    /// `[[canary]]`: `None` when no policy is configured (one branch on
    /// the request path).
    pub canary: Option<Arc<crate::canary::Canaries>>,
    /// `[[routes]]`: `None` when no rule is configured (one branch on the
    /// request path, with the registration's `strip_prefix` hint).
    pub route_rules: Option<Arc<crate::route_rules::RouteRules>>,
    /// `[[cache]]`: `None` when no policy is configured (one branch on the
    /// request path).
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// `[[auth]]`: `None` when no policy is configured (one branch on the
    /// request path).
    pub auth: Option<Arc<crate::auth::Auth>>,
}
