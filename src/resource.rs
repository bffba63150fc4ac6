//! Resources: the rate-limit buckets requests are counted in.
//!
//! Rate-limited APIs count calls per *resource* (Comic Vine: 200 per hour for each of `issue`,
//! `volume`, `search`...). A [`ResourceClassifier`] derives the resource from the request; the
//! stock classifiers are:
//!
//! * [`DefaultResourceClassifier`]: the first path segment that is not `api` or a version
//!   (`v1`, `v2.1`, `2024-01-01`). `/api/issues/` is `issues`, `/api/issue/4000-1/` is `issue`,
//!   `/v3/repos/o/r` is `repos`. List and detail endpoints of one collection thus stay together,
//!   and different collections never share a catch-all bucket.
//! * [`PathSegment`]: the segment right after a fixed prefix.
//! * [`PrefixTable`]: a longest-prefix table, falling back to another classifier.
//! * [`classify_fn`]: a closure.
//!
//! Names are validated one way everywhere: not empty, not only white space (surrounding white
//! space is trimmed). [`Resource::new`] and [`PrefixTable::try_route`] return an
//! [`InvalidResource`] for names read at run time; [`Resource::from_static`] and
//! [`PrefixTable::route`] panic, for the literals of a configuration;
//! [`Limits::resource`](crate::rate_limit::Limits::resource) reports it when the layer is built.
//!
//! # Example
//!
//! ```
//! use courteous::{PrefixTable, Resource, ResourceClassifier};
//!
//! let classifier = PrefixTable::new()
//!     .route("/api/search", "search")
//!     .route("/api/issue", "issue");
//! let request = http::Request::get("https://comicvine.example/api/issues/?offset=100")
//!     .body(())
//!     .unwrap();
//! let (parts, _) = request.into_parts();
//! assert_eq!(classifier.classify(&parts), Resource::from_static("issue"));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use http::request::Parts;

/// The name of a rate-limit bucket: a non-empty string, cheap to clone.
///
/// # Example
///
/// ```
/// use courteous::Resource;
///
/// let issue = Resource::from_static("issue");
/// assert_eq!(issue.as_str(), "issue");
/// let configured = String::from(" ");
/// assert_eq!(Resource::new(configured).unwrap_err().code(), "invalid_resource");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource(Arc<str>);

impl Resource {
    /// A resource with this name (without surrounding white space), or an [`InvalidResource`]
    /// when the name is empty or only white space.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::Resource;
    ///
    /// assert_eq!(Resource::new(" search ").unwrap().as_str(), "search");
    /// assert!(Resource::new("").is_err());
    /// ```
    pub fn new(name: impl AsRef<str>) -> Result<Self, InvalidResource> {
        let name = name.as_ref().trim();
        if name.is_empty() {
            Err(InvalidResource(()))
        } else {
            Ok(Resource(Arc::from(name)))
        }
    }

    /// A resource named by a literal, like `HeaderName::from_static`.
    ///
    /// # Panics
    ///
    /// When `name` is empty or only white space. Use [`Resource::new`] for names read at run
    /// time.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::Resource;
    ///
    /// assert_eq!(Resource::from_static("search").as_str(), "search");
    /// ```
    pub fn from_static(name: &'static str) -> Self {
        match Resource::new(name) {
            Ok(resource) => resource,
            Err(err) => panic!("Resource::from_static({name:?}): {err}"),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource used when a request names none (the root path `/`).
    pub fn root() -> Self {
        Resource(Arc::from("root"))
    }
}

/// A resource name that is empty or only white space. Returned by [`Resource::new`] and
/// [`PrefixTable::try_route`].
///
/// # Example
///
/// ```
/// use courteous::Resource;
///
/// let err = Resource::new("").unwrap_err();
/// assert_eq!(err.code(), "invalid_resource");
/// assert_eq!(err.to_string(), "a resource name must not be empty; name the resource");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a resource name must not be empty; name the resource")]
pub struct InvalidResource(());

impl InvalidResource {
    /// `"invalid_resource"`.
    pub const fn code(&self) -> &'static str {
        "invalid_resource"
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for Resource {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Resource {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Derives the rate-limit [`Resource`] of a request.
///
/// # Example
///
/// ```
/// use courteous::{Resource, ResourceClassifier};
/// use http::request::Parts;
///
/// /// Everything on one host shares one bucket.
/// struct PerHost;
///
/// impl ResourceClassifier for PerHost {
///     fn classify(&self, parts: &Parts) -> Resource {
///         parts.uri.host().and_then(|host| Resource::new(host).ok()).unwrap_or_else(Resource::root)
///     }
/// }
///
/// let (parts, _) = http::Request::get("https://api.example/x").body(()).unwrap().into_parts();
/// assert_eq!(PerHost.classify(&parts).as_str(), "api.example");
/// ```
pub trait ResourceClassifier: Send + Sync + 'static {
    /// The resource this request is counted in.
    fn classify(&self, parts: &Parts) -> Resource;
}

impl<C: ResourceClassifier + ?Sized> ResourceClassifier for Arc<C> {
    fn classify(&self, parts: &Parts) -> Resource {
        (**self).classify(parts)
    }
}

impl<C: ResourceClassifier + ?Sized> ResourceClassifier for Box<C> {
    fn classify(&self, parts: &Parts) -> Resource {
        (**self).classify(parts)
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Whether a path segment looks like a credential rather than a collection name: a Telegram bot
/// token (`bot123456:AAE...`), an API key or a signed token carried in the path. A resource
/// name ends up in the stores, the logs and metric labels, so such a segment is never one.
///
/// The test: a `:` (collection names have none), or 20 characters or more with both letters and
/// digits (`subscription_schedules` has no digit; ids and dates are shorter).
fn looks_secret(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.contains(&b':')
        || (bytes.len() >= 20
            && bytes.iter().any(u8::is_ascii_digit)
            && bytes.iter().any(u8::is_ascii_alphabetic))
}

/// `v1`, `v2.1`, `V3`, or a date such as `2024-01-01`.
fn is_version(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let version = matches!(bytes.first(), Some(b'v' | b'V'))
        && bytes.len() > 1
        && bytes[1..].iter().all(|b| b.is_ascii_digit() || *b == b'.')
        && bytes[1].is_ascii_digit();
    let date = !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_digit)
        && bytes.contains(&b'-');
    version || date
}

/// The stock classifier: the first path segment that is neither `api` nor a version.
///
/// | path | resource |
/// |---|---|
/// | `/api/issues/` | `issues` |
/// | `/api/issue/4000-14582/` | `issue` |
/// | `/v3/repos/rust-lang/rust/issues` | `repos` |
/// | `/2024-06-01/charges` | `charges` |
/// | `/` | `root` |
/// | `/bot123456:AAE-x9Vq8sKd2/getMe` | `getme` (a segment that looks like a credential is skipped) |
///
/// Names are lower-cased. Use [`PrefixTable`] or [`classify_fn`] when an API counts differently.
///
/// # Example
///
/// ```
/// use courteous::{DefaultResourceClassifier, ResourceClassifier};
///
/// let (parts, _) = http::Request::get("https://api.example/api/v2/Volumes/?limit=10")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(DefaultResourceClassifier.classify(&parts).as_str(), "volumes");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResourceClassifier;

impl ResourceClassifier for DefaultResourceClassifier {
    fn classify(&self, parts: &Parts) -> Resource {
        segments(parts.uri.path())
            .find(|s| !s.eq_ignore_ascii_case("api") && !is_version(s) && !looks_secret(s))
            .and_then(|s| Resource::new(s.to_ascii_lowercase()).ok())
            .unwrap_or_else(Resource::root)
    }
}

/// The path segment right after a fixed prefix: with prefix `/api/`, `/api/issues/?x=1` is
/// `issues`. Requests outside the prefix, or with nothing after it, fall back to
/// [`DefaultResourceClassifier`].
///
/// # Example
///
/// ```
/// use courteous::{PathSegment, ResourceClassifier};
///
/// let classifier = PathSegment::after("/rest/api/");
/// let (parts, _) = http::Request::get("https://jira.example/rest/api/search?jql=x")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(classifier.classify(&parts).as_str(), "search");
/// ```
#[derive(Debug, Clone)]
pub struct PathSegment {
    prefix: String,
}

impl PathSegment {
    /// Classify by the segment after `prefix` (a leading and a trailing `/` are implied).
    pub fn after(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim_matches('/');
        let prefix = if trimmed.is_empty() {
            "/".to_owned()
        } else {
            format!("/{trimmed}/")
        };
        PathSegment { prefix }
    }
}

impl ResourceClassifier for PathSegment {
    fn classify(&self, parts: &Parts) -> Resource {
        let path = parts.uri.path();
        let rest = path
            .strip_prefix(self.prefix.as_str())
            .or_else(|| (path == self.prefix.trim_end_matches('/')).then_some(""));
        match rest.and_then(|rest| segments(rest).next()) {
            // A credential in the path is never a resource name.
            Some(segment) if looks_secret(segment) => DefaultResourceClassifier.classify(parts),
            Some(segment) => {
                Resource::new(segment.to_ascii_lowercase()).unwrap_or_else(|_| Resource::root())
            }
            None => DefaultResourceClassifier.classify(parts),
        }
    }
}

/// A table of path prefixes, longest match first, with a fallback classifier for the rest.
///
/// A prefix matches at segment boundaries and also as a plain string prefix, so `/api/issue`
/// matches `/api/issue/4000-1/` and `/api/issues/`. Put the more specific prefix in the table
/// when two resources share a stem.
///
/// # Example
///
/// ```
/// use courteous::{PrefixTable, ResourceClassifier};
///
/// let table = PrefixTable::new()
///     .route("/search", "search")
///     .route("/repos/", "core");
/// let (parts, _) = http::Request::get("https://api.github.example/search/issues?q=x")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(table.classify(&parts).as_str(), "search");
/// let (parts, _) = http::Request::get("https://api.github.example/users/octocat")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(table.classify(&parts).as_str(), "users"); // the fallback
/// ```
pub struct PrefixTable {
    routes: Vec<(String, Resource)>,
    fallback: Arc<dyn ResourceClassifier>,
}

impl PrefixTable {
    /// An empty table that falls back to [`DefaultResourceClassifier`].
    pub fn new() -> Self {
        PrefixTable {
            routes: Vec::new(),
            fallback: Arc::new(DefaultResourceClassifier),
        }
    }

    /// Requests whose path starts with `prefix` belong to `resource`.
    ///
    /// # Panics
    ///
    /// When `resource` is empty or only white space: a configuration error caught when the
    /// table is built. Use [`PrefixTable::try_route`] for names read at run time.
    #[must_use]
    pub fn route(self, prefix: impl Into<String>, resource: &str) -> Self {
        match self.try_route(prefix, resource) {
            Ok(table) => table,
            Err(err) => panic!("PrefixTable::route({resource:?}): {err}"),
        }
    }

    /// Requests whose path starts with `prefix` belong to `resource`, or an
    /// [`InvalidResource`] when `resource` is empty or only white space.
    ///
    /// # Example
    ///
    /// ```
    /// use courteous::PrefixTable;
    ///
    /// let names = ["search", ""];
    /// assert!(PrefixTable::new().try_route("/search", names[0]).is_ok());
    /// assert!(PrefixTable::new().try_route("/other", names[1]).is_err());
    /// ```
    pub fn try_route(
        mut self,
        prefix: impl Into<String>,
        resource: &str,
    ) -> Result<Self, InvalidResource> {
        let resource = Resource::new(resource)?;
        self.routes.push((prefix.into(), resource));
        self.routes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(self)
    }

    /// The classifier for paths no prefix matches.
    #[must_use]
    pub fn fallback(mut self, fallback: impl ResourceClassifier) -> Self {
        self.fallback = Arc::new(fallback);
        self
    }
}

impl Default for PrefixTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PrefixTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixTable")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl ResourceClassifier for PrefixTable {
    fn classify(&self, parts: &Parts) -> Resource {
        let path = parts.uri.path();
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, resource)| resource.clone())
            .unwrap_or_else(|| self.fallback.classify(parts))
    }
}

/// A classifier from a closure.
///
/// # Example
///
/// ```
/// use courteous::{Resource, ResourceClassifier, classify_fn};
///
/// let by_method = classify_fn(|parts: &http::request::Parts| {
///     Resource::new(parts.method.as_str().to_ascii_lowercase()).unwrap_or_else(|_| Resource::root())
/// });
/// let (parts, _) = http::Request::post("https://api.example/x").body(()).unwrap().into_parts();
/// assert_eq!(by_method.classify(&parts).as_str(), "post");
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F>
where
    F: Fn(&Parts) -> Resource + Send + Sync + 'static,
{
    ClassifyFn(f)
}

/// A [`ResourceClassifier`] made by [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<F> ResourceClassifier for ClassifyFn<F>
where
    F: Fn(&Parts) -> Resource + Send + Sync + 'static,
{
    fn classify(&self, parts: &Parts) -> Resource {
        (self.0)(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(c: &impl ResourceClassifier, uri: &str) -> String {
        let (parts, _) = http::Request::get(uri).body(()).unwrap().into_parts();
        c.classify(&parts).to_string()
    }

    #[test]
    fn default_separates_collections_and_never_uses_a_catch_all() {
        // Regression for DESIGN.md §6.2: every list endpoint fell into one `unknown` bucket.
        let c = DefaultResourceClassifier;
        assert_eq!(classify(&c, "http://h/api/issues/?format=json"), "issues");
        assert_eq!(classify(&c, "http://h/api/volumes/"), "volumes");
        assert_eq!(classify(&c, "http://h/api/issue/4000-14582/"), "issue");
        assert_eq!(classify(&c, "http://h/api/search/?query=x"), "search");
        assert_eq!(classify(&c, "http://h/v3/repos/a/b/issues"), "repos");
        assert_eq!(classify(&c, "http://h/2024-06-01/charges"), "charges");
        assert_eq!(classify(&c, "http://h/"), "root");
        assert_eq!(classify(&c, "http://h/api/"), "root");
    }

    #[test]
    fn a_credential_in_the_path_is_never_a_resource_name() {
        let token = "bot123456789:AAEhBP0av28xFDxyz-Q5y1zU9wNdKmS3Ltw";
        let c = DefaultResourceClassifier;
        assert_eq!(classify(&c, &format!("http://h/{token}/getMe")), "getme");
        assert_eq!(
            classify(&c, "http://h/k/3f1c9a7e5b2d4c6e8f0a1b3c5d7e9f01/prices"),
            "k",
            "only the first usable segment is looked at"
        );
        assert_eq!(
            classify(&c, "http://h/3f1c9a7e5b2d4c6e8f0a1b3c5d7e9f01/prices"),
            "prices"
        );
        let after = PathSegment::after("/api/");
        assert_eq!(
            classify(&after, &format!("http://h/api/{token}/getMe")),
            "getme"
        );
        for name in [
            "subscription_schedules",
            "issues",
            "oauth2",
            "4000-14582",
            "v1",
        ] {
            assert!(!looks_secret(name), "{name}");
        }
    }

    #[test]
    fn version_detection() {
        assert!(is_version("v1"));
        assert!(is_version("V2.1"));
        assert!(is_version("2024-01-01"));
        assert!(!is_version("v"));
        assert!(!is_version("volumes"));
        assert!(!is_version("4000"));
        assert!(!is_version(""));
    }

    #[test]
    fn path_segment_after_prefix_with_fallback() {
        let c = PathSegment::after("/api/");
        assert_eq!(classify(&c, "http://h/api/issues/"), "issues");
        assert_eq!(classify(&c, "http://h/api/Issue/1"), "issue");
        assert_eq!(classify(&c, "http://h/api"), "root");
        assert_eq!(classify(&c, "http://h/other/things"), "other");
        let c = PathSegment::after("api");
        assert_eq!(classify(&c, "http://h/api/x/y"), "x");
    }

    #[test]
    fn prefix_table_prefers_longest_prefix() {
        let t = PrefixTable::new()
            .route("/api/", "general")
            .route("/api/search", "search");
        assert_eq!(classify(&t, "http://h/api/search/?q=1"), "search");
        assert_eq!(classify(&t, "http://h/api/issues/"), "general");
        assert_eq!(classify(&t, "http://h/elsewhere"), "elsewhere");
        let t = t.fallback(classify_fn(|_| Resource::from_static("other")));
        assert_eq!(classify(&t, "http://h/elsewhere"), "other");
    }

    #[test]
    #[should_panic(expected = "must not be empty")]
    fn prefix_table_rejects_empty_resource() {
        let _ = PrefixTable::new().route("/x", " ");
    }

    #[test]
    fn every_path_validates_names_alike() {
        for name in ["", " ", "\t\n"] {
            assert!(Resource::new(name).is_err(), "{name:?}");
            assert!(
                PrefixTable::new().try_route("/x", name).is_err(),
                "{name:?}"
            );
            assert!(std::panic::catch_unwind(|| Resource::from_static(name)).is_err());
        }
        assert_eq!(Resource::new(" a ").unwrap(), Resource::from_static("a"));
    }
}
