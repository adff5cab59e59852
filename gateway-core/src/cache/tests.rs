use std::sync::Mutex;

use super::*;

/// A backend: answers each request with `answer`, counting calls and
/// keeping the request fields it saw.
struct Backend {
    seen: Mutex<Vec<HeaderMap>>,
}

impl Backend {
    fn new() -> Self {
        Self {
            seen: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn cache_with(store: CacheStoreConfig, default_ttl: u64) -> ResponseCache {
    let policy = CachePolicyConfig {
        service: "svc".into(),
        prefix: Some("/cached".into()),
        default_ttl: Duration::from_secs(default_ttl),
    };
    ResponseCache::new(&store, &[policy], &Metrics::new()).unwrap()
}

fn cache() -> ResponseCache {
    cache_with(CacheStoreConfig::default(), 0)
}

fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.test");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

/// One request through the cache at generation `generation`; the backend
/// answers with `reply(request)`. Returns x-cache, status, body, headers.
async fn call(
    c: &ResponseCache,
    backend: &Backend,
    generation: u64,
    parts: request::Parts,
    reply: impl FnOnce(&request::Parts) -> Response<Body>,
) -> (String, u16, String, HeaderMap) {
    let policy = c.policy("svc", "/cached", &parts).unwrap();
    let resp = c
        .serve(policy, "svc", generation, parts, |p| async move {
            backend.seen.lock().unwrap().push(p.headers.clone());
            Ok(reply(&p))
        })
        .await
        .unwrap();
    let x = resp
        .headers()
        .get(X_CACHE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = resp.status().as_u16();
    let (head, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        x,
        status,
        String::from_utf8(body.to_vec()).unwrap(),
        head.headers,
    )
}

fn get(path: &str) -> request::Parts {
    req(Method::GET, path, &[])
}

const FRESH: &[(&str, &str)] = &[("cache-control", "max-age=60")];

#[tokio::test]
async fn a_fresh_answer_is_served_again_with_its_age() {
    let (c, b) = (cache(), Backend::new());
    let r = call(&c, &b, 1, get("/cached/a?x=1"), |_| {
        answer(200, FRESH, "one")
    })
    .await;
    assert_eq!((r.0.as_str(), r.2.as_str()), ("MISS", "one"));
    let r = call(&c, &b, 1, get("/cached/a?x=1"), |_| {
        answer(200, FRESH, "two")
    })
    .await;
    assert_eq!((r.0.as_str(), r.1, r.2.as_str()), ("HIT", 200, "one"));
    assert!(r.3.contains_key(header::AGE));
    assert_eq!(b.calls(), 1);
    // Another query, host or method is another key.
    let r = call(&c, &b, 1, get("/cached/a?x=2"), |_| answer(200, FRESH, "q")).await;
    assert_eq!(r.0, "MISS");
    let other = req(Method::GET, "/cached/a?x=1", &[]);
    let mut other = other;
    other
        .headers
        .insert(header::HOST, "other.test".parse().unwrap());
    assert_eq!(
        call(&c, &b, 1, other, |_| answer(200, FRESH, "h")).await.0,
        "MISS"
    );
    let head = req(Method::HEAD, "/cached/a?x=1", &[]);
    assert_eq!(
        call(&c, &b, 1, head, |_| answer(200, FRESH, "")).await.0,
        "MISS"
    );
}

#[test]
fn the_longest_prefix_covers_and_other_routes_are_untouched() {
    let policies = [None, Some("/cached/deep")].map(|prefix| CachePolicyConfig {
        service: "svc".into(),
        prefix: prefix.map(Into::into),
        default_ttl: Duration::from_secs(u64::from(prefix.is_some())),
    });
    let c = ResponseCache::new(&CacheStoreConfig::default(), &policies, &Metrics::new()).unwrap();
    let deep = c.policy("svc", "/cached", &get("/cached/deep/x")).unwrap();
    assert_eq!(deep.default_ttl, Duration::from_secs(1));
    let top = c.policy("svc", "/cached", &get("/cached/x")).unwrap();
    assert_eq!(top.default_ttl, Duration::ZERO);
    assert!(c.policy("other", "/cached", &get("/cached/x")).is_none());
    assert!(ResponseCache::new(&CacheStoreConfig::default(), &[], &Metrics::new()).is_none());
}

#[tokio::test]
async fn unsafe_answers_are_never_stored() {
    type Fields = &'static [(&'static str, &'static str)];
    let cases: &[(Fields, Fields)] = &[
        (
            &[],
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        ),
        (
            &[],
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "s=1"),
            ],
        ),
        (&[], &[("cache-control", "max-age=60"), ("vary", "*")]),
        (&[], &[("cache-control", "private, max-age=60")]),
        (&[], &[("cache-control", "no-store, max-age=60")]),
        (
            &[("authorization", "Bearer t")],
            &[("cache-control", "max-age=60")],
        ),
        (
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60")],
        ),
        (
            &[("range", "bytes=0-1")],
            &[("cache-control", "max-age=60")],
        ),
        (&[], &[]),
    ];
    for (i, (request, response)) in cases.iter().enumerate() {
        let (c, b) = (cache(), Backend::new());
        for _ in 0..2 {
            let r = call(&c, &b, 1, req(Method::GET, "/cached", request), |_| {
                answer(200, response, "x")
            })
            .await;
            assert_ne!(r.0, "HIT", "case {i}");
        }
        assert_eq!(b.calls(), 2, "case {i}");
    }
}

#[tokio::test]
async fn authorized_answers_are_stored_when_public() {
    let (c, b) = (cache(), Backend::new());
    let auth = [("authorization", "Bearer t")];
    let public = [("cache-control", "public, max-age=60")];
    for _ in 0..2 {
        call(&c, &b, 1, req(Method::GET, "/cached", &auth), |_| {
            answer(200, &public, "p")
        })
        .await;
    }
    assert_eq!(b.calls(), 1);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (c, b) = (cache(), Backend::new());
    let vary = [("cache-control", "max-age=60"), ("vary", "accept-language")];
    for round in 0..2 {
        for lang in ["en", "fr"] {
            let r = call(
                &c,
                &b,
                1,
                req(Method::GET, "/cached", &[("accept-language", lang)]),
                |p| {
                    let l = p.headers["accept-language"].to_str().unwrap().to_owned();
                    answer(200, &vary, &l)
                },
            )
            .await;
            assert_eq!(r.2, lang);
            assert_eq!(r.0, if round == 0 { "MISS" } else { "HIT" });
        }
    }
    assert_eq!(b.calls(), 2);
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_etag() {
    let (c, b) = (cache(), Backend::new());
    let tagged = [
        ("cache-control", "max-age=0"),
        ("etag", "\"v1\""),
        ("x-v", "1"),
    ];
    let r = call(&c, &b, 1, get("/cached"), |_| answer(200, &tagged, "body")).await;
    assert_eq!(r.0, "MISS");
    let r = call(&c, &b, 1, get("/cached"), |p| {
        assert_eq!(p.headers["if-none-match"], "\"v1\"");
        answer(304, &[("etag", "\"v1\""), ("x-v", "2")], "")
    })
    .await;
    assert_eq!(
        (r.0.as_str(), r.1, r.2.as_str()),
        ("REVALIDATED", 200, "body")
    );
    assert_eq!(r.3["x-v"], "2");
    // A new body replaces the entry.
    let r = call(&c, &b, 1, get("/cached"), |_| {
        answer(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
            "new",
        )
    })
    .await;
    assert_eq!((r.0.as_str(), r.2.as_str()), ("STALE", "new"));
    let r = call(&c, &b, 1, get("/cached"), |_| answer(500, &[], "")).await;
    assert_eq!((r.0.as_str(), r.2.as_str()), ("HIT", "new"));
    assert_eq!(b.calls(), 3);
}

#[tokio::test]
async fn a_client_etag_gets_304_from_the_cache() {
    let (c, b) = (cache(), Backend::new());
    let tagged = [("cache-control", "max-age=60"), ("etag", "W/\"v1\"")];
    call(&c, &b, 1, get("/cached"), |_| answer(200, &tagged, "body")).await;
    let r = call(
        &c,
        &b,
        1,
        req(
            Method::GET,
            "/cached",
            &[("if-none-match", "\"v0\", \"v1\"")],
        ),
        |_| answer(500, &[], ""),
    )
    .await;
    assert_eq!((r.0.as_str(), r.1, r.2.as_str()), ("HIT", 304, ""));
    assert_eq!(b.calls(), 1);
}

#[tokio::test]
async fn unsafe_methods_invalidate_and_bypass() {
    let (c, b) = (cache(), Backend::new());
    call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "a")).await;
    // A failed POST leaves the entry.
    let r = call(&c, &b, 1, req(Method::POST, "/cached", &[]), |_| {
        answer(500, &[], "")
    })
    .await;
    assert_eq!(r.0, "BYPASS");
    assert_eq!(
        call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "b"))
            .await
            .0,
        "HIT"
    );
    let r = call(&c, &b, 1, req(Method::DELETE, "/cached", &[]), |_| {
        answer(204, &[], "")
    })
    .await;
    assert_eq!(r.0, "BYPASS");
    let r = call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "b")).await;
    assert_eq!((r.0.as_str(), r.2.as_str()), ("MISS", "b"));
}

#[tokio::test]
async fn a_new_generation_is_a_miss() {
    let (c, b) = (cache(), Backend::new());
    call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "a")).await;
    assert_eq!(
        call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "b"))
            .await
            .0,
        "HIT"
    );
    let r = call(&c, &b, 2, get("/cached"), |_| answer(200, FRESH, "b")).await;
    assert_eq!((r.0.as_str(), r.2.as_str()), ("MISS", "b"));
    assert_eq!(
        call(&c, &b, 2, get("/cached"), |_| answer(200, FRESH, "c"))
            .await
            .2,
        "b"
    );
}

#[tokio::test]
async fn oversized_answers_are_passed_on_unstored() {
    let store = CacheStoreConfig {
        max_bytes: 1 << 20,
        max_entry_bytes: 1000,
    };
    let (c, b) = (cache_with(store, 0), Backend::new());
    let big = "x".repeat(1001);
    for _ in 0..2 {
        let r = call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, &big)).await;
        assert_eq!((r.0.as_str(), r.2.len()), ("MISS", 1001));
    }
    assert_eq!(b.calls(), 2);
}

#[tokio::test]
async fn default_ttl_applies_only_without_stated_freshness() {
    let (c, b) = (cache_with(CacheStoreConfig::default(), 60), Backend::new());
    call(&c, &b, 1, get("/cached"), |_| answer(200, &[], "a")).await;
    assert_eq!(
        call(&c, &b, 1, get("/cached"), |_| answer(200, &[], "b"))
            .await
            .0,
        "HIT"
    );
    // `no-cache` states it: revalidated (here: no validator, not kept).
    let nc = [("cache-control", "no-cache")];
    call(&c, &b, 1, get("/cached/nc"), |_| answer(200, &nc, "a")).await;
    assert_eq!(
        call(&c, &b, 1, get("/cached/nc"), |_| answer(200, &nc, "b"))
            .await
            .0,
        "MISS"
    );
    // Not with Authorization.
    let auth = [("authorization", "Bearer t")];
    call(&c, &b, 1, req(Method::GET, "/cached/a", &auth), |_| {
        answer(200, &[], "a")
    })
    .await;
    let r = call(&c, &b, 1, req(Method::GET, "/cached/a", &auth), |_| {
        answer(200, &[], "b")
    })
    .await;
    assert_eq!(r.0, "MISS");
}

#[tokio::test]
async fn outcomes_are_counted_per_service() {
    let metrics = Metrics::new();
    let policy = CachePolicyConfig {
        service: "svc".into(),
        prefix: None,
        default_ttl: Duration::ZERO,
    };
    let c = ResponseCache::new(&CacheStoreConfig::default(), &[policy], &metrics).unwrap();
    let b = Backend::new();
    call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "a")).await;
    call(&c, &b, 1, get("/cached"), |_| answer(200, FRESH, "a")).await;
    let status = crate::registry::RegistryStatus {
        kind: "test",
        connected: true,
        last_error: None,
        sync: None,
        watch: None,
    };
    let text = metrics.encode(0, &status);
    assert!(
        text.contains("gateway_cache_requests_total{service=\"svc\",result=\"HIT\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_cache_requests_total{service=\"svc\",result=\"MISS\"} 1"),
        "{text}"
    );
    let _ = b.last();
}
