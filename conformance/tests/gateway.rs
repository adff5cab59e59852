//! Gateway mode: every case through a real gateway (gateway-core, in this
//! process, embedded registry) to the reference backend registered with it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use conformance::case;
use conformance::gateway::GatewayTarget;
use conformance::reference::Conformance;
use conformance::run::{Summary, Target, Verdict};
use gateway_core::config::GatewayConfig;
use gateway_core::gateway::{Gateway, Listeners};
use service_sdk::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_passes_every_case_it_can_express() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = GatewayConfig::default();
    config.listen.public = any;
    config.listen.internal = None;
    config.listen.registration = any;
    config.listen.admin = any;
    let gateway = Gateway::builder(config.clone())
        .build()
        .await
        .expect("gateway");
    let listeners = Listeners::bind(&config).await.expect("bind gateway");
    let addrs = listeners.addrs().expect("addrs");
    let (public, registration) = (
        addrs.public.expect("public"),
        addrs.registration.expect("registration"),
    );
    let (stop_gw, gw_stopped) = tokio::sync::oneshot::channel::<()>();
    let gw = tokio::spawn(gateway.serve(listeners, async {
        let _ = gw_stopped.await;
    }));

    let bound = Backend::builder("conformance")
        .route("/conformance")
        .gateway(format!("http://{registration}"))
        .drain(Duration::ZERO)
        .bind(Conformance::new())
        .await
        .expect("bind backend");
    let backend = Target::new(&format!("grpc://{}", bound.local_addr())).expect("target");
    let (stop_be, be_stopped) = tokio::sync::oneshot::channel::<()>();
    let be = tokio::spawn(bound.serve(async {
        let _ = be_stopped.await;
    }));

    let target = GatewayTarget::new(&format!("http://{public}"), backend).expect("gateway target");
    target
        .wait_routable(Duration::from_secs(15))
        .await
        .expect("routable");
    let cases = case::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
        .expect("the case files parse");
    let outcomes = target.run_all(&cases, |o| println!("{}", o.report())).await;
    let summary = Summary::of(&outcomes);
    println!("{summary}");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .map(|o| o.report())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert!(summary.passed >= 30, "{summary}");

    let _ = stop_be.send(());
    be.await.expect("join").expect("backend");
    let _ = stop_gw.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), gw).await;
}
