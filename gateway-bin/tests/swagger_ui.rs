//! Swagger UI for the registration API, served by the real `gateway` binary
//! at `/docs` on the registration listener from assets compiled into it: the
//! page and every asset it names load from the gateway itself, nothing from
//! another host, and the page shows the gateway's own `/openapi.yaml`.

mod support;

use support::GatewayProcess;

/// The `src` and `href` values of a page.
fn references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            out.push(part.split('"').next().unwrap().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn swagger_ui_and_its_assets_are_served_offline() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let base = gw.registration_url();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();

    // /docs sends the browser to the page.
    let resp = client.get(format!("{base}/docs")).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers()["location"], "/docs/");

    let resp = client.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        resp.headers()
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("<div id=\"swagger-ui\">"), "{html}");

    // Every asset is relative to the page: nothing loads from elsewhere.
    let refs = references(&html);
    for script in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
    ] {
        assert!(refs.iter().any(|r| r.ends_with(script)), "{refs:?}");
    }
    let mut initializer = String::new();
    for r in &refs {
        assert!(!r.contains("//"), "{r} is not served by the gateway");
        let url = format!("{base}/docs/{}", r.trim_start_matches("./"));
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body = resp.bytes().await.unwrap();
        assert!(!body.is_empty(), "{url}");
        if r.ends_with(".js") {
            assert!(ct.contains("javascript"), "{url}: {ct}");
        } else if r.ends_with(".css") {
            assert!(ct.starts_with("text/css"), "{url}: {ct}");
        }
        if r.ends_with("swagger-initializer.js") {
            initializer = String::from_utf8(body.to_vec()).unwrap();
        }
    }
    // The bundle is the whole of Swagger UI (over a megabyte), not a loader.
    let bundle = client
        .get(format!("{base}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bundle.len() > 500_000, "{}", bundle.len());

    // The page shows the gateway's own document, and the online validator
    // badge (Swagger UI's one call to another host) is off.
    assert!(
        initializer.contains("\"url\": \"/openapi.yaml\""),
        "{initializer}"
    );
    assert!(
        initializer.contains("\"validatorUrl\": \"none\""),
        "{initializer}"
    );
    let doc = client
        .get(format!("{base}/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), 200);
    let doc = doc.text().await.unwrap();
    assert_eq!(doc, gateway_core::registration::OPENAPI);
    // "Try it out" goes to the listener that served the page, whatever its
    // port: the first server is relative.
    assert!(doc.contains("\nservers:\n  - url: /\n"), "{doc}");

    // An unknown asset is a 404, not the page.
    let resp = client
        .get(format!("{base}/docs/no-such-asset.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
