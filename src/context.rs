//! Per-request context: priority, resource and key in, a [`Report`] out.
//!
//! Layers read what they need from the request's [`http::Extensions`], and leave what they did in
//! the response's. [`ContextLayer`], outermost in the stack, resolves everything once:
//!
//! * the [`Priority`] set on the request, or the layer's default;
//! * the [`Resource`] from its [`ResourceClassifier`];
//! * the [`RequestKey`] from its [`KeyExtractor`] (none for streaming bodies);
//!
//! and stores them as a [`RequestContext`] extension, so the cache, dedupe and rate-limit layers
//! below classify and hash each request only once. A layer used without a `ContextLayer` above it
//! derives the context itself with the stock classifier and key extractor.
//!
//! On the way back, every layer fills in its part of the response's [`Report`].
//!
//! # Example
//!
//! ```
//! use courteous::{ContextLayer, PathSegment, Priority, Report};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(ContextLayer::new().classifier(PathSegment::after("/api/")))
//!     .service(service_fn(|req: http::Request<String>| async move {
//!         // Inner layers see the resolved context.
//!         let context = courteous::RequestContext::of(&req).unwrap();
//!         assert_eq!(context.priority(), Priority::User);
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//!
//! let mut request = http::Request::get("http://h/api/issues/").body(String::new()).unwrap();
//! request.extensions_mut().insert(Priority::User);
//! let response = service.oneshot(request).await.unwrap();
//! let report = Report::of(&response).unwrap();
//! assert_eq!(report.priority, Some(Priority::User));
//! assert_eq!(report.resource.as_ref().unwrap().as_str(), "issues");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use http::Extensions;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::ReplayableBody;
use crate::key::{DefaultKeyExtractor, KeyExtractor, RequestKey};
use crate::resource::{DefaultResourceClassifier, Resource, ResourceClassifier};

/// Who is waiting for a request: a person, or nobody in particular.
///
/// Set it on a request as an extension; the rate limiter lets `User` requests go first and gives
/// `Background` requests whatever capacity users leave.
///
/// # Example
///
/// ```
/// use courteous::Priority;
///
/// let mut request = http::Request::get("http://h/").body(()).unwrap();
/// request.extensions_mut().insert(Priority::Background);
/// assert_eq!(Priority::of(request.extensions()), Some(Priority::Background));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// A person is waiting for the answer.
    User,
    /// Bulk or periodic work that can wait.
    Background,
}

impl Priority {
    /// The priority set in these extensions, if any.
    pub fn of(extensions: &Extensions) -> Option<Priority> {
        extensions.get::<Priority>().copied()
    }

    /// `"user"` or `"background"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::User => "user",
            Priority::Background => "background",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the stack knows about a request, resolved once by [`ContextLayer`].
///
/// # Example
///
/// ```
/// use courteous::{ContextLayer, Priority, RequestContext};
///
/// let request = http::Request::get("http://h/api/volumes/").body(String::new()).unwrap();
/// let context = ContextLayer::new().resolve(&request);
/// assert_eq!(context.priority(), Priority::User);
/// assert_eq!(context.resource().as_str(), "volumes");
/// assert!(context.key().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct RequestContext {
    priority: Priority,
    resource: Resource,
    key: Option<RequestKey>,
    secrets: Secrets,
}

/// The key extractor, asked which query parameters are secret when an error is masked.
#[derive(Clone)]
struct Secrets(Arc<dyn KeyExtractor>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets")
    }
}

impl RequestContext {
    /// The request's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The rate-limit bucket the request is counted in.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The key that identifies identical requests; `None` for a body that cannot be replayed.
    pub fn key(&self) -> Option<&RequestKey> {
        self.key.as_ref()
    }

    /// `text` (an error message) with the secret query parameters of the request's
    /// [`KeyExtractor`] (see [`KeyExtractor::is_secret_param`]) and URL userinfo masked.
    ///
    /// ```
    /// use courteous::{ContextLayer, DefaultKeyExtractor};
    ///
    /// let request = http::Request::get("http://h/x?sig=abc").body(String::new()).unwrap();
    /// let layer = ContextLayer::new().key_extractor(DefaultKeyExtractor::new().secret_param("sig"));
    /// let context = layer.resolve(&request);
    /// assert_eq!(
    ///     context.redact("GET http://h/x?sig=abc&api_key=k failed"),
    ///     "GET http://h/x?sig=REDACTED&api_key=REDACTED failed"
    /// );
    /// ```
    pub fn redact(&self, text: &str) -> String {
        crate::key::redact_secrets(text, |name| self.secrets.0.is_secret_param(name))
    }

    /// Masks `url` in place as [`redact`](Self::redact) masks text.
    pub(crate) fn redact_url(&self, url: &mut reqwest::Url) {
        crate::key::redact_url(url, |name| self.secrets.0.is_secret_param(name));
    }

    /// The context a [`ContextLayer`] stored on this request, if any.
    pub fn of<B>(request: &http::Request<B>) -> Option<&RequestContext> {
        request.extensions().get::<RequestContext>()
    }

    /// The context stored on this request, or, when no [`ContextLayer`] ran, one resolved now with
    /// the stock defaults and stored for the layers below.
    pub fn resolve<B: ReplayableBody>(request: &mut http::Request<B>) -> RequestContext {
        if let Some(context) = Self::of(request) {
            return context.clone();
        }
        let context = ContextConfig::stock().resolve_mut(request);
        request.extensions_mut().insert(context.clone());
        context
    }
}

/// What the stack did with a request, carried as an extension of the response.
///
/// Each layer fills in its own fields; a field is `None` where the layer is absent or did not
/// act.
///
/// # Example
///
/// ```
/// use courteous::{Priority, Report};
///
/// let mut response = http::Response::new(());
/// Report::record(response.extensions_mut()).priority = Some(Priority::User);
/// assert_eq!(Report::of(&response).unwrap().priority, Some(Priority::User));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The priority the request ran with.
    pub priority: Option<Priority>,
    /// The resource it was counted in.
    pub resource: Option<Resource>,
    /// What the cache layer did: hit, miss, stale, revalidated or bypass.
    pub cache: Option<crate::cache::CacheStatus>,
    /// What the dedupe layer did: led, followed, or made its own call.
    pub dedupe: Option<crate::dedupe::DedupeRole>,
    /// What the rate limiter did: time waited, capacity left, server feedback.
    pub rate_limit: Option<crate::rate_limit::RateLimitReport>,
    /// The upstream's answer: for a request whose own call reached it, that call; for a dedupe
    /// follower ([`dedupe`](Self::dedupe) says so), its leader's call, which the follower
    /// shared; `None` for a cache hit.
    pub upstream: Option<UpstreamReport>,
}

/// What the upstream answered to a request's own call: part of its [`Report`].
///
/// # Example
///
/// ```
/// use courteous::{Report, UpstreamReport};
/// # fn show(response: &http::Response<()>) {
/// if let Some(UpstreamReport { status, latency, .. }) = Report::of(response).and_then(|r| r.upstream.as_ref()) {
///     println!("the API answered {status} in {latency:?}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamReport {
    /// The status of the upstream's response.
    pub status: http::StatusCode,
    /// From sending the request to the response head.
    pub latency: std::time::Duration,
    /// The size of the response's body, when the upstream said (`Content-Length`).
    pub bytes: Option<u64>,
    /// How many dedupe followers the answer served (written by the dedupe leader).
    pub followers: u32,
}

impl UpstreamReport {
    /// A report of an answer with `status` after `latency` (size unknown, no followers).
    pub fn new(status: http::StatusCode, latency: std::time::Duration) -> Self {
        UpstreamReport {
            status,
            latency,
            bytes: None,
            followers: 0,
        }
    }
}

impl Report {
    /// The report on a response, if any layer wrote one.
    pub fn of<B>(response: &http::Response<B>) -> Option<&Report> {
        response.extensions().get::<Report>()
    }

    /// The report in these extensions, inserted empty if absent, for a layer to fill in.
    pub fn record(extensions: &mut Extensions) -> &mut Report {
        extensions.get_or_insert_default::<Report>()
    }
}

#[derive(Clone)]
struct ContextConfig {
    default_priority: Priority,
    classifier: Arc<dyn ResourceClassifier>,
    keys: Arc<dyn KeyExtractor>,
    default_headers: Option<Arc<http::HeaderMap>>,
    journal: Option<crate::journal::Journal>,
}

impl ContextConfig {
    fn stock() -> &'static ContextConfig {
        static STOCK: std::sync::OnceLock<ContextConfig> = std::sync::OnceLock::new();
        STOCK.get_or_init(|| ContextConfig {
            default_priority: Priority::User,
            classifier: Arc::new(DefaultResourceClassifier),
            keys: Arc::new(DefaultKeyExtractor::new()),
            default_headers: None,
            journal: None,
        })
    }

    fn resolve_head<B: ReplayableBody>(
        &self,
        request: &http::Request<B>,
        head: &http::request::Parts,
    ) -> RequestContext {
        RequestContext {
            priority: Priority::of(request.extensions()).unwrap_or(self.default_priority),
            resource: self.classifier.classify(head),
            key: self.keys.key(head, request.body().replayable_bytes()),
            secrets: Secrets(self.keys.clone()),
        }
    }

    /// Resolves from a shared request: classifiers and keys read a `Parts`, which `&Request`
    /// cannot lend, so this copies the head (headers included).
    fn resolve<B: ReplayableBody>(&self, request: &http::Request<B>) -> RequestContext {
        let mut head = empty_head(request);
        head.headers = request.headers().clone();
        if let Some(defaults) = &self.default_headers {
            add_default_headers(defaults, &mut head.headers);
        }
        self.resolve_head(request, &head)
    }

    /// Resolves from an owned request without copying its headers: they are lent to the head
    /// and put back. This is the per-request path.
    fn resolve_mut<B: ReplayableBody>(&self, request: &mut http::Request<B>) -> RequestContext {
        let mut head = empty_head(request);
        head.headers = std::mem::take(request.headers_mut());
        let context = self.resolve_head(request, &head);
        *request.headers_mut() = head.headers;
        context
    }
}

/// Adds the `defaults` that `headers` lacks, exactly as `reqwest::Client` does when it sends:
/// for each name absent from `headers`, its first default value.
pub(crate) fn add_default_headers(defaults: &http::HeaderMap, headers: &mut http::HeaderMap) {
    for (name, value) in defaults {
        if let http::header::Entry::Vacant(entry) = headers.entry(name) {
            entry.insert(value.clone());
        }
    }
}

/// The request head without headers and extensions (which classifiers and keys do not read).
fn empty_head<B>(request: &http::Request<B>) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = request.method().clone();
    parts.uri = request.uri().clone();
    parts.version = request.version();
    parts
}

/// Resolves each request's [`RequestContext`] and writes [`Report::priority`] and
/// [`Report::resource`] on its response.
///
/// Place it outermost. Cloning it shares its configuration.
///
/// # Example
///
/// ```
/// use courteous::{ContextLayer, DefaultKeyExtractor, PrefixTable, Priority};
///
/// let layer = ContextLayer::new()
///     .default_priority(Priority::Background)
///     .classifier(PrefixTable::new().route("/api/search", "search"))
///     .key_extractor(DefaultKeyExtractor::new().secret_param("sig"));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ContextLayer {
    config: Arc<ContextConfig>,
}

impl ContextLayer {
    /// Requests without a [`Priority`] are [`Priority::User`]; the stock classifier and key
    /// extractor.
    pub fn new() -> Self {
        ContextLayer {
            config: Arc::new(ContextConfig::stock().clone()),
        }
    }

    /// The priority of requests that do not set one (default [`Priority::User`], so that a request
    /// nobody marked is never starved by bulk work).
    #[must_use]
    pub fn default_priority(mut self, priority: Priority) -> Self {
        Arc::make_mut(&mut self.config).default_priority = priority;
        self
    }

    /// How requests map to resources (default [`DefaultResourceClassifier`]).
    #[must_use]
    pub fn classifier(mut self, classifier: impl ResourceClassifier) -> Self {
        Arc::make_mut(&mut self.config).classifier = Arc::new(classifier);
        self
    }

    /// How identical requests are recognised (default [`DefaultKeyExtractor`]).
    #[must_use]
    pub fn key_extractor(mut self, keys: impl KeyExtractor) -> Self {
        Arc::make_mut(&mut self.config).keys = Arc::new(keys);
        self
    }

    /// The default headers of the `reqwest::Client` below the stack
    /// (`reqwest::ClientBuilder::default_headers`).
    ///
    /// `reqwest::Client` adds its default headers when it sends, after every layer has run, so
    /// no layer sees them: two clients with different default `Authorization` headers over one
    /// store would share cache entries and dedupe results. Give the same headers here and this
    /// layer adds each one the request lacks, as reqwest would (the first value of a name, never
    /// replacing a request's own), before the key is computed; the cache, dedupe and the
    /// upstream then see the same request.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::{ContextLayer, HttpClient};
    /// use http::{HeaderMap, header::AUTHORIZATION};
    /// use tower::ServiceBuilder;
    ///
    /// let mut defaults = HeaderMap::new();
    /// defaults.insert(AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    /// let reqwest = reqwest::Client::builder().default_headers(defaults.clone()).build().unwrap();
    /// let client = ServiceBuilder::new()
    ///     .layer(ContextLayer::new().default_headers(defaults))
    ///     .service(HttpClient::new(reqwest));
    /// # let _ = client;
    /// ```
    #[must_use]
    pub fn default_headers(mut self, headers: http::HeaderMap) -> Self {
        Arc::make_mut(&mut self.config).default_headers =
            (!headers.is_empty()).then(|| Arc::new(headers));
        self
    }

    /// Writes a row to `journal` for each request whose own call reached the upstream (see
    /// [`journal`](crate::journal)); without one (the default), nothing is captured.
    ///
    /// ```
    /// use courteous::ContextLayer;
    /// use courteous::journal::{Journal, MemoryJournalStore};
    ///
    /// let layer = ContextLayer::new().journal(Journal::new(MemoryJournalStore::new()));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn journal(mut self, journal: crate::journal::Journal) -> Self {
        Arc::make_mut(&mut self.config).journal = Some(journal);
        self
    }

    /// The context this layer would give `request`.
    pub fn resolve<B: ReplayableBody>(&self, request: &http::Request<B>) -> RequestContext {
        self.config.resolve(request)
    }
}

impl Default for ContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ContextLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextLayer")
            .field("default_priority", &self.config.default_priority)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`ContextLayer`].
#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    config: Arc<ContextConfig>,
}

impl<S: fmt::Debug> fmt::Debug for ContextService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<http::Request<B>> for ContextService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
    B: ReplayableBody,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(defaults) = &self.config.default_headers {
            add_default_headers(defaults, request.headers_mut());
        }
        let context = self.config.resolve_mut(&mut request);
        let (priority, resource) = (context.priority, context.resource.clone());
        let span = crate::observe::request_span(request.method(), priority, &resource);
        let journal =
            (self.config.journal.as_ref()).map(|j| j.capture(&request, &self.config.keys));
        request.extensions_mut().insert(context.priority);
        request.extensions_mut().insert(context);
        let inner = span.in_scope(|| self.inner.call(request));
        ResponseFuture {
            inner,
            report: Some((priority, resource)),
            span,
            journal,
        }
    }
}

pin_project! {
    /// The response future of [`ContextService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        report: Option<(Priority, Resource)>,
        span: tracing::Span,
        journal: Option<Box<crate::journal::Capture>>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = Result<http::Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let Some((priority, resource)) = this.report.take() else {
            return Poll::Ready(result);
        };
        match result {
            Ok(mut response) => {
                let report = Report::record(response.extensions_mut());
                report.priority = Some(priority);
                report.resource = Some(resource);
                crate::observe::finish(this.span, report);
                if let Some(capture) = this.journal.take() {
                    capture.finish(report);
                }
                Poll::Ready(Ok(response))
            }
            Err(error) => {
                crate::observe::failed((priority, &resource));
                Poll::Ready(Err(error))
            }
        }
    }
}
