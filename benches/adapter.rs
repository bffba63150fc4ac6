//! The cost of going through courteous's adapters, against calling `reqwest` directly.
//!
//! All three variants send `GET /x` to one local axum server over keep-alive connections:
//! - `reqwest_direct`: `reqwest::Client::execute`;
//! - `tower_adapter`: `ContextLayer` + `HttpClient` (`http::Request` in, `http::Response` out);
//! - `reqwest_middleware`: `ClientWithMiddleware` with `courteous::CourteousMiddleware(ContextLayer)`,
//!   which converts to `http`, runs the stack and hands the call back to the chain.
//!
//! Run: `cargo bench --bench adapter`.

use courteous::{ContextLayer, CourteousMiddleware, HttpClient};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};

fn server(runtime: &tokio::runtime::Runtime) -> String {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/issues/?limit=10",
            listener.local_addr().unwrap()
        );
        let app = axum::Router::new().fallback(|| async { "{\"ok\":true}" });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    })
}

fn adapter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = server(&runtime);
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("adapter");

    group.bench_function("reqwest_direct", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = client.get(&url).build().unwrap();
            let response = client.execute(request).await.unwrap();
            response.bytes().await.unwrap()
        })
    });

    let tower_stack = ServiceBuilder::new()
        .layer(ContextLayer::new())
        .service(HttpClient::new(client.clone()));
    group.bench_function("tower_adapter", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = http::Request::get(&url)
                .body(reqwest::Body::from(""))
                .unwrap();
            let mut service = tower_stack.clone();
            let ready = ServiceExt::<http::Request<reqwest::Body>>::ready(&mut service);
            let response = ready.await.unwrap().call(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        })
    });

    let middleware = reqwest_middleware::ClientBuilder::new(client.clone())
        .with(CourteousMiddleware::new(ContextLayer::new()))
        .build();
    group.bench_function("reqwest_middleware", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = middleware.get(&url).send().await.unwrap();
            response.bytes().await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, adapter);
criterion_main!(benches);
