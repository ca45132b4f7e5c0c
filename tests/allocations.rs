//! Allocations per successful call, pinned so they cannot creep back: the
//! real application (shipped defaults: metrics recorded, JSON logs at info,
//! single flight on) on a runtime of its own, whose threads alone are
//! counted, against the Cognito stand-in on another. A separate test binary:
//! the counting allocator is process-wide.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use cognito_facade::{
    app::Application,
    config::Config,
    config::LogFormat,
    proto::{
        GetUserAuthFactorsRequest, identity_provider_service_client::IdentityProviderServiceClient,
    },
};

#[allow(dead_code)]
#[path = "../examples/cognito-standin/standin.rs"]
mod standin;

/// Allocations per successful call, server side (the facade, tonic, hyper
/// and the AWS SDK together), as measured when pinned (bench/PROFILE.md
/// records the history). A change that adds allocations to the call path
/// fails here; one that removes some should lower this figure.
/// Measured: 364 (2026-11-27), then 349 with cached metric handles and
/// one-buffer JSON lines; the margin absorbs run-to-run jitter only.
const PINNED_ALLOCATIONS_PER_CALL: f64 = 365.0;

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting
// touches only an atomic and a const-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn allocations_per_successful_call_are_pinned() {
    let client_side = tokio::runtime::Runtime::new().unwrap();
    let server_side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.set(true))
        .build()
        .unwrap();
    let subscriber =
        cognito_facade::app::subscriber(LogFormat::Json, "info", false, std::io::sink).unwrap();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    metrics::set_global_recorder(
        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
    )
    .unwrap();

    let stand_in = client_side.block_on(standin::StandIn::start());
    let mut config = Config::default();
    config.server.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.region = Some("eu-west-1".to_owned());
    config.upstream.endpoint = Some(stand_in.endpoint.clone());
    config.metrics_addr = None;
    config.server.drain_delay = Duration::ZERO;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = server_side.block_on(Application::build(config)).unwrap();
    let addr = app.addr();
    let server = server_side.spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let per_call = client_side.block_on(async {
        let client = IdentityProviderServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let call = |n: usize| {
            let request = GetUserAuthFactorsRequest {
                access_token: format!("alloc.token.{n}"),
            };
            let mut client = client.clone();
            async move { client.get_user_auth_factors(request).await.unwrap() }
        };
        // Warm-up: connections, pools, the metric and log callsites.
        for n in 0..300 {
            call(n).await;
        }
        let calls = 2000;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for n in 300..300 + calls {
            call(n).await;
        }
        let after = ALLOCATIONS.load(Ordering::Relaxed);
        (after - before) as f64 / calls as f64
    });
    let _ = stop.send(());
    server_side.block_on(server).unwrap().unwrap();
    println!("allocations per successful call (server side): {per_call:.1}");
    assert!(
        per_call <= PINNED_ALLOCATIONS_PER_CALL,
        "{per_call:.1} allocations per call; pinned at {PINNED_ALLOCATIONS_PER_CALL}"
    );
    assert!(
        per_call > 0.0,
        "nothing was counted: the server threads are not marked"
    );
}
