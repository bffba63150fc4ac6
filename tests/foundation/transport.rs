//! Both ways in carry the request's `Priority` to the layers, against a real local server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use courteous::{
    ContextLayer, CourteousMiddleware, Handoff, HandoffError, HttpClient, Priority, Report,
    RequestContext,
};
use http::HeaderValue;
use reqwest_middleware::ClientBuilder;
use tower::{Layer, ServiceBuilder, ServiceExt};

use crate::support::TestServer;

/// Reads the priority the stack resolved and shows it to the server as `x-priority`.
fn show_priority(mut request: http::Request<reqwest::Body>) -> http::Request<reqwest::Body> {
    let priority = RequestContext::of(&request)
        .expect("ContextLayer ran above")
        .priority();
    request
        .headers_mut()
        .insert("x-priority", HeaderValue::from_static(priority.as_str()));
    request
}

type ShowPriority = fn(http::Request<reqwest::Body>) -> http::Request<reqwest::Body>;

/// A layer standing for the layers to come: it needs the priority.
#[derive(Clone)]
struct PriorityProbeLayer;

impl<S> Layer<S> for PriorityProbeLayer {
    type Service = tower::util::MapRequest<S, ShowPriority>;

    fn layer(&self, inner: S) -> Self::Service {
        tower::util::MapRequest::new(inner, show_priority as ShowPriority)
    }
}

async fn body_json(response: http::Response<reqwest::Body>) -> serde_json::Value {
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn tower_adapter_carries_priority_to_the_layers() {
    let server = TestServer::start().await;
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new().default_priority(Priority::User))
        .layer(PriorityProbeLayer)
        .service(HttpClient::new(reqwest::Client::new()));

    let mut request = http::Request::get(server.url("/api/issues/?limit=1"))
        .body(reqwest::Body::from(""))
        .unwrap();
    request.extensions_mut().insert(Priority::Background);
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let report = Report::of(&response).unwrap().clone();
    assert_eq!(report.priority, Some(Priority::Background));
    assert_eq!(report.resource.unwrap().as_str(), "issues");
    assert_eq!(body_json(response).await["priority"], "background");

    // No priority on the request: the layer's default.
    let request = http::Request::get(server.url("/api/issue/4000-1/"))
        .body(reqwest::Body::from(""))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(
        Report::of(&response).unwrap().priority,
        Some(Priority::User)
    );
    assert_eq!(body_json(response).await["priority"], "user");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn reqwest_middleware_carries_priority_to_the_layers() {
    let server = TestServer::start().await;
    let stack = ServiceBuilder::new()
        .layer(ContextLayer::new().default_priority(Priority::Background))
        .layer(PriorityProbeLayer);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(stack))
        .build();

    let url = server.url("/api/volumes/?offset=0");
    let response = client
        .get(&url)
        .with_extension(Priority::User)
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().as_str(), url);
    let report = response.extensions().get::<Report>().unwrap().clone();
    assert_eq!(report.priority, Some(Priority::User));
    assert_eq!(report.resource.unwrap().as_str(), "volumes");
    let body: serde_json::Value = response.json_body().await;
    assert_eq!(body["priority"], "user");

    let response = client.get(&url).send().await.unwrap();
    let body: serde_json::Value = response.json_body().await;
    assert_eq!(body["priority"], "background");
    assert_eq!(server.hits(), 2);
}

trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

/// Counts the requests that reach it, and checks the user's extensions reach it too.
struct Counting(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Counting {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        assert_eq!(extensions.get::<Priority>(), Some(&Priority::User));
        assert!(extensions.get::<RequestContext>().is_some());
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn middlewares_after_courteous_still_run_once_per_upstream_call() {
    let server = TestServer::start().await;
    let count = Arc::new(AtomicUsize::new(0));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(ContextLayer::new()))
        .with(Counting(count.clone()))
        .build();
    for _ in 0..3 {
        let response = client
            .get(server.url("/api/x"))
            .with_extension(Priority::User)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn transport_errors_come_back_typed_on_both_paths() {
    // A port with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/x", listener.local_addr().unwrap());
    drop(listener);

    let error = HttpClient::new(reqwest::Client::new())
        .oneshot(
            http::Request::get(&url)
                .body(reqwest::Body::from(""))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(CourteousMiddleware::new(ContextLayer::new()))
        .build();
    match client.get(&url).send().await.unwrap_err() {
        reqwest_middleware::Error::Reqwest(error) => assert!(error.is_connect(), "{error:?}"),
        other => panic!("expected a reqwest error, got {other:?}"),
    }
}

#[tokio::test]
async fn handoff_outside_the_middleware_fails_with_a_typed_error() {
    let error = Handoff::new()
        .oneshot(
            http::Request::get("http://127.0.0.1:9/")
                .body(reqwest::Body::from(""))
                .unwrap(),
        )
        .await
        .unwrap_err();
    let error = error.downcast_ref::<HandoffError>().unwrap();
    assert_eq!(error, &HandoffError::NotInMiddleware);
    assert_eq!(error.code(), "handoff_not_in_middleware");
}

#[tokio::test]
async fn streaming_request_bodies_have_no_key() {
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from("x"))]);
    let request = http::Request::post("http://h/api/upload")
        .body(reqwest::Body::wrap_stream(stream))
        .unwrap();
    assert!(ContextLayer::new().resolve(&request).key().is_none());
    let request = http::Request::post("http://h/api/upload")
        .body(reqwest::Body::from("x"))
        .unwrap();
    assert!(ContextLayer::new().resolve(&request).key().is_some());
}
