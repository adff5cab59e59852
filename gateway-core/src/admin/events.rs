//! The admin UI's live feed: one hub per admin router follows the
//! registry's catalogue watch (registrations, deregistrations, health flips)
//! and the balancer's ejection state, keeps the last [`RECENT`] events with
//! their times, and tells every `/admin/events` stream.
//!
//! A stream sends `state` (the `/admin/services` view plus the routes) when
//! it opens, after every burst of changes and every [`SNAPSHOT_EVERY`]
//! (counters such as in-flight move without events), and one `event` per
//! change. EventSource reconnects by itself, and a `state` on (re)connect
//! makes up for whatever was missed.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::logs::LogFeed;
use crate::balance::Ejection;
use crate::registry::{Catalog, Health};
use crate::shared::Shared;

/// Events kept for a stream that opens later.
pub const RECENT: usize = 200;
/// A full `state` at least this often.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// How often the balancer's ejection state is compared (in memory, no I/O).
pub const EJECTION_SCAN: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
enum Msg {
    Event(Arc<Value>),
    Log(Arc<Value>),
    Changed,
}

/// Recent events and the subscribers' channel.
pub struct EventHub {
    tx: broadcast::Sender<Msg>,
    recent: Mutex<VecDeque<Arc<Value>>>,
    logs: Option<LogFeed>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Passing => "passing",
        Health::Failing => "failing",
    }
}

type Key = (String, String);

/// Instances of a catalogue: (service, id) -> (address, health, detail).
fn members(c: &Catalog) -> HashMap<Key, (String, Health, String)> {
    c.instances
        .iter()
        .map(|i| {
            let r = &i.registration;
            (
                (r.service.clone(), r.instance_id.clone()),
                (r.address.clone(), i.health, i.detail.to_string()),
            )
        })
        .collect()
}

/// What changed between two catalogues, as events.
pub(crate) fn diff(
    old: &HashMap<Key, (String, Health, String)>,
    new: &HashMap<Key, (String, Health, String)>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let ev = |kind: &str, k: &Key, addr: &str, detail: String| json!({"kind": kind, "service": k.0, "instance_id": k.1, "address": addr, "detail": detail});
    let mut keys: Vec<&Key> = new.keys().chain(old.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (old.get(k), new.get(k)) {
            (None, Some((a, h, _))) => out.push(ev(
                "registered",
                k,
                a,
                format!("health {}", health_name(*h)),
            )),
            (Some((a, _, _)), None) => out.push(ev("deregistered", k, a, String::new())),
            (Some((oa, oh, _)), Some((a, h, d))) => {
                if oa != a {
                    out.push(ev("registered", k, a, format!("address was {oa}")));
                }
                if oh != h {
                    let mut e = ev(
                        "health",
                        k,
                        a,
                        format!("{} -> {}: {d}", health_name(*oh), health_name(*h)),
                    );
                    e["health"] = json!(health_name(*h));
                    out.push(e);
                }
            }
            (None, None) => {}
        }
    }
    out
}

impl EventHub {
    /// A hub following `shared`'s registry and balancer; its task ends when
    /// the hub is dropped or the registry's channel closes.
    /// With `logs`, the streams carry its lines too (`log` events).
    pub fn start(shared: Arc<Shared>, logs: Option<LogFeed>) -> Arc<Self> {
        let hub = Arc::new(EventHub {
            tx: broadcast::channel(1024).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            logs,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(follow(Arc::downgrade(&hub), shared));
            if let Some(feed) = &hub.logs {
                rt.spawn(relay_logs(Arc::downgrade(&hub), feed.subscribe()));
            }
        }
        hub
    }

    fn publish(&self, mut e: Value) {
        e["at_ms"] = json!(now_ms());
        let e = Arc::new(e);
        {
            let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(e.clone());
        }
        let _ = self.tx.send(Msg::Event(e));
    }

    fn recent(&self) -> Vec<Value> {
        let r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().map(|v| (**v).clone()).collect()
    }
}

/// Passes the log feed's lines to the streams (a lagging relay skips lines:
/// the UI's pane is a view, not the record).
async fn relay_logs(hub: Weak<EventHub>, mut rx: broadcast::Receiver<Arc<Value>>) {
    loop {
        match rx.recv().await {
            Ok(line) => {
                let Some(hub) = hub.upgrade() else { return };
                let _ = hub.tx.send(Msg::Log(line));
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn follow(hub: Weak<EventHub>, shared: Arc<Shared>) {
    let mut rx = shared.registry.watch();
    let mut known = members(&rx.borrow_and_update());
    let mut ejected: HashMap<(Arc<str>, Arc<str>), Ejection> = HashMap::new();
    let mut scan = tokio::time::interval(EJECTION_SCAN);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let changed = tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                let catalog = rx.borrow_and_update().clone();
                // The view the streams send is the balancer's: let it apply
                // this catalogue first (it does so on its own task).
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    shared.balancer.wait_applied(catalog.version),
                )
                .await;
                let now = members(&catalog);
                let events = diff(&known, &now);
                known = now;
                let Some(hub) = hub.upgrade() else { return };
                for e in events {
                    hub.publish(e);
                }
                true
            }
            _ = scan.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                let snap = shared.balancer.snapshot();
                let mut now = HashMap::new();
                let mut any = false;
                for eps in snap.services.values() {
                    for ep in eps.endpoints.iter() {
                        let st = shared.balancer.stats(ep);
                        let key = (ep.service.clone(), ep.instance_id.clone());
                        let was = ejected.get(&key).copied();
                        if let Some(j) = st.ejection {
                            if was != Some(j) {
                                let why = match j {
                                    Ejection::Unreachable => "unreachable",
                                    Ejection::Failing => "failing",
                                };
                                hub.publish(json!({"kind": "ejected", "service": &*ep.service,
                                    "instance_id": &*ep.instance_id, "address": &*ep.address,
                                    "ejection": why,
                                    "detail": format!("{why}; for {} ms", st.ejected_for_ms)}));
                                any = true;
                            }
                            now.insert(key, j);
                        } else if was.is_some() {
                            hub.publish(json!({"kind": "readmitted", "service": &*ep.service,
                                "instance_id": &*ep.instance_id, "address": &*ep.address,
                                "detail": "taking traffic again"}));
                            any = true;
                        }
                    }
                }
                ejected = now;
                any
            }
        };
        if changed && let Some(hub) = hub.upgrade() {
            let _ = hub.tx.send(Msg::Changed);
        }
    }
}

/// `GET /admin/events`: server-sent events, see the module docs.
pub(crate) fn stream(
    hub: Arc<EventHub>,
    shared: Arc<Shared>,
    state: impl Fn() -> Value + Send + Sync + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hub.tx.subscribe();
    let mut first: VecDeque<Event> = VecDeque::new();
    first.push_back(
        Event::default()
            .event("hello")
            .retry(Duration::from_secs(1))
            .data(
                json!({
                    "recent": hub.recent(),
                    "logs": hub.logs.as_ref().map(LogFeed::recent),
                    "node_id": &*shared.node_id,
                })
                .to_string(),
            ),
    );
    first.push_back(Event::default().event("state").data(state().to_string()));
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + SNAPSHOT_EVERY, SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draining = shared.draining.clone();
    let st = (rx, first, tick, state, draining);
    let s = futures_util::stream::unfold(
        st,
        |(mut rx, mut pending, mut tick, state, draining)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), (rx, pending, tick, state, draining)));
                }
                let msg = tokio::select! {
                    // A draining gateway ends the stream: EventSource reconnects
                    // (to another replica, or to this one restarted).
                    _ = draining.cancelled() => return None,
                    m = rx.recv() => m,
                    _ = tick.tick() => Ok(Msg::Changed),
                };
                let mut changed = false;
                let mut take = |m: Result<Msg, broadcast::error::RecvError>,
                                pending: &mut VecDeque<Event>|
                 -> bool {
                    match m {
                        Ok(Msg::Event(v)) => {
                            pending.push_back(Event::default().event("event").data(v.to_string()))
                        }
                        Ok(Msg::Log(v)) => {
                            pending.push_back(Event::default().event("log").data(v.to_string()))
                        }
                        Ok(Msg::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            changed = true
                        }
                        Err(broadcast::error::RecvError::Closed) => return false,
                    }
                    true
                };
                if !take(msg, &mut pending) {
                    return None;
                }
                // A burst of changes gets one `state`.
                loop {
                    match rx.try_recv() {
                        Ok(m) => {
                            take(Ok(m), &mut pending);
                        }
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            take(Err(broadcast::error::RecvError::Lagged(n)), &mut pending);
                        }
                        Err(_) => break,
                    }
                }
                if changed {
                    pending.push_back(Event::default().event("state").data(state().to_string()));
                    tick.reset();
                }
            }
        },
    );
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(entries: &[(&str, &str, &str, Health)]) -> HashMap<Key, (String, Health, String)> {
        entries
            .iter()
            .map(|(s, i, a, h)| {
                (
                    (s.to_string(), i.to_string()),
                    (a.to_string(), *h, "d".into()),
                )
            })
            .collect()
    }

    #[test]
    fn diff_names_registrations_deregistrations_and_health_flips() {
        let old = m(&[
            ("a", "1", "x:1", Health::Passing),
            ("a", "2", "x:2", Health::Passing),
        ]);
        let new = m(&[
            ("a", "1", "x:1", Health::Failing),
            ("b", "1", "y:1", Health::Unknown),
        ]);
        let e = diff(&old, &new);
        let kinds: Vec<(&str, &str, &str)> = e
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap(),
                    e["service"].as_str().unwrap(),
                    e["instance_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("health", "a", "1"),
                ("deregistered", "a", "2"),
                ("registered", "b", "1")
            ]
        );
        assert_eq!(e[0]["health"], "failing");
        assert!(diff(&new, &new).is_empty());
    }
}
