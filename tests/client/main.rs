//! The builder (`Courteous`): one test per option, each failing without it, against a real
//! local server that counts upstream calls.

#[path = "../support/mod.rs"]
mod support;

mod backends;
mod errors;
mod inputs;
mod options;
mod package;
mod shutdown;

use courteous::{RateLimited, Report};
use reqwest_middleware::ClientWithMiddleware;

/// The status and report of a GET of `url` through `client`.
pub async fn get(client: &ClientWithMiddleware, url: &str) -> (u16, Report) {
    let response = client.get(url).send().await.expect("response");
    let status = response.status().as_u16();
    let report = response
        .extensions()
        .get::<Report>()
        .cloned()
        .expect("the stack writes a report");
    (status, report)
}

/// Whether a GET of `url` was refused by the rate limiter.
pub async fn refused(client: &ClientWithMiddleware, url: &str) -> bool {
    match client.get(url).send().await {
        Ok(_) => false,
        Err(reqwest_middleware::Error::Middleware(error)) => {
            assert!(error.downcast_ref::<RateLimited>().is_some(), "{error:#}");
            true
        }
        Err(error) => panic!("unexpected error: {error}"),
    }
}
