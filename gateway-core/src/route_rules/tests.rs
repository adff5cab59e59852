use super::*;
use crate::config::GatewayConfig;

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn target(service: &str, prefix: &str, strip: bool) -> Target {
    Target {
        service: service.into(),
        prefix: prefix.into(),
        timeout: Duration::from_secs(30),
        stream: false,
        max_duration: Duration::from_secs(60),
        strip_prefix: strip,
        max_body_bytes: 100,
        max_stream_body_bytes: 0,
    }
}

fn rules(toml_text: &str) -> Result<RouteRules, ConfigError> {
    let c: GatewayConfig = toml::from_str(toml_text).expect("parses");
    c.validate()?;
    Ok(RouteRules::new(&c.routes)?.expect("rules"))
}

fn config_error(toml_text: &str) -> String {
    let c: GatewayConfig = toml::from_str(toml_text).expect("parses");
    c.validate().expect_err("refused").to_string()
}

/// The path, query and `X-Forwarded-Prefix` the backend gets.
fn sent(rules: Option<&RouteRules>, t: &mut Target, uri: &str) -> (String, Option<String>) {
    let mut p = parts("GET", uri, &[]);
    let m = match apply(rules, &p, t).unwrap() {
        Applied::Forward(m) => m,
        Applied::Answered(_) => panic!("answered"),
    };
    rewrite(m.as_ref(), &mut p, t).unwrap();
    (
        p.uri.path_and_query().unwrap().to_string(),
        p.headers
            .get(&X_FORWARDED_PREFIX)
            .map(|v| v.to_str().unwrap().to_owned()),
    )
}

#[test]
fn strip_and_rewrite_keep_the_query() {
    let r = rules(
        r#"
[[routes]]
service = "products"
strip_prefix = true
[[routes]]
service = "v2"
rewrite_prefix = "/api/v2"
"#,
    )
    .unwrap();
    let mut t = target("products", "/product", false);
    let (path, prefix) = sent(Some(&r), &mut t, "/product/1?a=b&c");
    assert_eq!(path, "/1?a=b&c");
    assert_eq!(prefix.as_deref(), Some("/product"));
    assert_eq!(sent(Some(&r), &mut t, "/product").0, "/");
    assert_eq!(sent(Some(&r), &mut t, "/product/").0, "/");
    assert_eq!(sent(Some(&r), &mut t, "/product/a/b/").0, "/a/b/");
    assert_eq!(sent(Some(&r), &mut t, "/product?x=1").0, "/?x=1");
    let mut t = target("v2", "/product", false);
    assert_eq!(sent(Some(&r), &mut t, "/product/1?q").0, "/api/v2/1?q");
    assert_eq!(sent(Some(&r), &mut t, "/product").0, "/api/v2");
}

#[test]
fn odd_spellings_are_rebuilt_from_the_normalised_segments() {
    let mut t = target("products", "/product", true);
    assert_eq!(sent(None, &mut t, "//product/1").0, "/1");
    assert_eq!(sent(None, &mut t, "/%70roduct/a%20b").0, "/a%20b");
    assert_eq!(sent(None, &mut t, "/product/x/../1").0, "/1");
    assert_eq!(sent(None, &mut t, "/product/a/%2e%2e/1").0, "/1");
    assert_eq!(sent(None, &mut t, "/product/a%2Fb").0, "/a%2Fb");
    assert_eq!(
        sent(None, &mut t, "/product/.well-known/x").0,
        "/.well-known/x"
    );
}

#[test]
fn the_hint_strips_unless_a_rule_says_otherwise() {
    // No rules at all: the hint alone.
    let mut t = target("products", "/product", true);
    assert_eq!(
        sent(None, &mut t, "/product/1"),
        ("/1".into(), Some("/product".into()))
    );
    // A rule that says nothing about the path: still the hint.
    let r = rules("[[routes]]\nservice = \"products\"\ntimeout = \"1s\"\n").unwrap();
    assert_eq!(sent(Some(&r), &mut t, "/product/1").0, "/1");
    assert_eq!(t.timeout, Duration::from_secs(1));
    // strip_prefix = false: the operator wins.
    let r = rules("[[routes]]\nservice = \"products\"\nstrip_prefix = false\n").unwrap();
    assert_eq!(
        sent(Some(&r), &mut t, "/product/1"),
        ("/product/1".into(), None)
    );
    // No hint, no rule: untouched (and a client's X-Forwarded-Prefix passes).
    let mut t = target("products", "/product", false);
    assert_eq!(sent(None, &mut t, "/product/1").0, "/product/1");
}

#[test]
fn longest_prefix_wins_and_limits_apply() {
    let r = rules(
        r#"
[[routes]]
service = "products"
max_body_bytes = 10
[[routes]]
service = "products"
prefix = "/product/upload"
max_body_bytes = 1000
timeout = "2s"
"#,
    )
    .unwrap();
    let mut t = target("products", "/product", false);
    let _ = apply(Some(&r), &parts("POST", "/product/upload/x", &[]), &mut t).unwrap();
    assert_eq!((t.max_body_bytes, t.max_stream_body_bytes), (1000, 1000));
    assert_eq!(t.timeout, Duration::from_secs(2));
    let mut t = target("products", "/product", false);
    let _ = apply(Some(&r), &parts("POST", "/product/1", &[]), &mut t).unwrap();
    assert_eq!((t.max_body_bytes, t.timeout), (10, Duration::from_secs(30)));
    // Another service: untouched.
    let mut t = target("other", "/product", false);
    let _ = apply(Some(&r), &parts("POST", "/product/1", &[]), &mut t).unwrap();
    assert_eq!(t.max_body_bytes, 100);
}

#[test]
fn header_edits_remove_then_add_both_ways() {
    let r = rules(
        r#"
[[routes]]
service = "products"
request_headers = { add = { "x-from-gateway" = "1" }, remove = ["x-debug", "x-from-gateway"] }
response_headers = { add = { "x-frame-options" = "DENY" }, remove = ["server"] }
"#,
    )
    .unwrap();
    let mut t = target("products", "/product", false);
    let mut p = parts(
        "GET",
        "/product/1",
        &[
            ("x-debug", "1"),
            ("x-from-gateway", "forged"),
            ("x-keep", "k"),
        ],
    );
    let Applied::Forward(m) = apply(Some(&r), &p, &mut t).unwrap() else {
        panic!()
    };
    rewrite(m.as_ref(), &mut p, &t).unwrap();
    assert!(p.headers.get("x-debug").is_none());
    assert_eq!(p.headers["x-from-gateway"], "1");
    assert_eq!(p.headers.get_all("x-from-gateway").iter().count(), 1);
    assert_eq!(p.headers["x-keep"], "k");
    let mut answer = HeaderMap::new();
    answer.insert("server", HeaderValue::from_static("backend/1.0"));
    m.unwrap().apply(&mut answer);
    assert!(answer.get("server").is_none());
    assert_eq!(answer["x-frame-options"], "DENY");
}

const CORS: &str = r#"
[[routes]]
service = "products"
[routes.cors]
allow_origins = ["https://app.example"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization", "content-type"]
expose_headers = ["x-cache"]
max_age = "10m"
allow_credentials = true
"#;

fn preflight(r: &RouteRules, headers: &[(&str, &str)]) -> Result<Response<Body>, ForwardError> {
    let mut t = target("products", "/product", false);
    match apply(Some(r), &parts("OPTIONS", "/product/1", headers), &mut t)? {
        Applied::Answered(resp) => Ok(resp),
        Applied::Forward(_) => panic!("forwarded"),
    }
}

#[test]
fn cors_preflights_are_answered_or_refused() {
    let r = rules(CORS).unwrap();
    let ok = preflight(
        &r,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Content-Type, authorization",
            ),
        ],
    )
    .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    for (headers, why) in [
        (
            [
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            "origin https://evil.example",
        ),
        (
            [
                ("origin", "https://app.example"),
                ("access-control-request-method", "DELETE"),
            ],
            "method DELETE",
        ),
    ] {
        let e = preflight(&r, &headers).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CorsRefused);
        assert!(e.message.contains(why), "{}", e.message);
    }
    let e = preflight(
        &r,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-secret"),
        ],
    )
    .unwrap_err();
    assert!(
        e.message.contains("request header x-secret"),
        "{}",
        e.message
    );
    // An OPTIONS that is not a preflight is forwarded.
    let mut t = target("products", "/product", false);
    let plain = apply(Some(&r), &parts("OPTIONS", "/product/1", &[]), &mut t).unwrap();
    assert!(matches!(plain, Applied::Forward(Some(_))));
}

#[test]
fn cors_on_actual_answers() {
    let r = rules(CORS).unwrap();
    let mut t = target("products", "/product", false);
    let answer = |origin: &str, t: &mut Target| {
        let Applied::Forward(Some(m)) = apply(
            Some(&r),
            &parts("GET", "/product/1", &[("origin", origin)]),
            t,
        )
        .unwrap() else {
            panic!()
        };
        let mut h = HeaderMap::new();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        m.apply(&mut h);
        h
    };
    let h = answer("https://app.example", &mut t);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-expose-headers"], "x-cache");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["vary"], "Origin");
    let h = answer("https://evil.example", &mut t);
    assert!(
        h.get("access-control-allow-origin").is_none(),
        "the backend's is dropped too"
    );
    assert_eq!(h["vary"], "Origin");
    // Any origin: "*".
    let any = rules("[[routes]]\nservice = \"products\"\n[routes.cors]\nallow_origins = [\"*\"]\n")
        .unwrap();
    let Applied::Forward(Some(m)) = apply(
        Some(&any),
        &parts("GET", "/product/1", &[("origin", "https://x.example")]),
        &mut t,
    )
    .unwrap() else {
        panic!()
    };
    let mut h = HeaderMap::new();
    m.apply(&mut h);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h.get("vary").is_none());
}

#[test]
fn bad_rules_are_refused_naming_the_setting() {
    let cases = [
        (
            "service = \"p\"\nstrip_prefix = true\nrewrite_prefix = \"/v2\"",
            "routes.rewrite_prefix",
        ),
        (
            "service = \"p\"\nrewrite_prefix = \"v2\"",
            "routes.rewrite_prefix",
        ),
        (
            "service = \"p\"\nrewrite_prefix = \"/v2/\"",
            "routes.rewrite_prefix",
        ),
        ("service = \"P!\"", "routes.service"),
        ("service = \"p\"\nprefix = \"/a/../b\"", "routes.prefix"),
        (
            "service = \"p\"\nrequest_headers = { add = { \"bad name\" = \"1\" } }",
            "routes.request_headers.add",
        ),
        (
            "service = \"p\"\nrequest_headers = { add = { \"x-a\" = \"line\\nbreak\" } }",
            "routes.request_headers.add",
        ),
        (
            "service = \"p\"\nrequest_headers = { remove = [\"connection\"] }",
            "routes.request_headers.remove",
        ),
        (
            "service = \"p\"\nrequest_headers = { add = { \"x-forwarded-for\" = \"1.2.3.4\" } }",
            "routes.request_headers.add",
        ),
        (
            "service = \"p\"\nresponse_headers = { add = { \"transfer-encoding\" = \"chunked\" } }",
            "routes.response_headers.add",
        ),
        (
            "service = \"p\"\nmax_body_bytes = 0",
            "routes.max_body_bytes",
        ),
        ("service = \"p\"\ntimeout = \"0s\"", "routes.timeout"),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = [\"https://a.example/path\"]",
            "routes.cors.allow_origins",
        ),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = []",
            "routes.cors.allow_origins",
        ),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = [\"*\"]\nallow_credentials = true",
            "routes.cors.allow_credentials",
        ),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = [\"*\"]\nallow_methods = [\"get\"]",
            "routes.cors.allow_methods",
        ),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = [\"*\"]\nallow_headers = [\"a b\"]",
            "routes.cors.allow_headers",
        ),
        (
            "service = \"p\"\n[routes.cors]\nallow_origins = [\"*\"]\nexpose_headers = [\"a:b\"]",
            "routes.cors.expose_headers",
        ),
    ];
    for (body, setting) in cases {
        let e = config_error(&format!("[[routes]]\n{body}\n"));
        assert!(e.contains(&format!("`{setting}`")), "{body}: {e}");
        assert!(e.contains("entry 0"), "{e}");
    }
    let dup =
        config_error("[[routes]]\nservice = \"p\"\n[[routes]]\nservice = \"p\"\nprefix = \"/\"\n");
    assert!(dup.contains("`routes.prefix`"), "{dup}");
    // Unknown fields are refused by serde, naming them.
    let c = toml::from_str::<GatewayConfig>("[[routes]]\nservice = \"p\"\nstrip = true\n");
    assert!(c.unwrap_err().to_string().contains("strip"));
}

#[test]
fn no_rules_cost_nothing() {
    assert!(RouteRules::new(&[]).unwrap().is_none());
    let mut t = target("products", "/product", false);
    let p = parts("GET", "/product/1", &[]);
    assert!(matches!(
        apply(None, &p, &mut t).unwrap(),
        Applied::Forward(None)
    ));
}

#[test]
fn the_readme_example_is_a_valid_rule() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Route rules").expect("section")..];
    let start = section.find("```toml\n").expect("example") + "```toml\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let r = rules(example).expect("valid");
    let mut t = target("products", "/product", false);
    assert_eq!(sent(Some(&r), &mut t, "/product/1").0, "/1");
    assert_eq!(t.timeout, Duration::from_secs(5));
    assert_eq!(t.max_body_bytes, 1_048_576);
}
