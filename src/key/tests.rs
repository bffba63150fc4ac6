use http::HeaderName;

use super::*;

fn key(req: http::Request<()>) -> RequestKey {
    let (parts, _) = req.into_parts();
    DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap()
}

#[test]
fn the_order_headers_are_configured_in_does_not_change_keys() {
    use http::header::{ACCEPT, ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
    let (parts, _) = http::Request::get("http://h/x")
        .header("accept", "a/b")
        .header("accept-language", "fr")
        .header("authorization", "t")
        .body(())
        .unwrap()
        .into_parts();
    let one = DefaultKeyExtractor::new().headers([
        PROXY_AUTHORIZATION,
        AUTHORIZATION,
        ACCEPT_LANGUAGE,
        COOKIE,
        ACCEPT,
    ]);
    let two = DefaultKeyExtractor::new().headers([
        ACCEPT,
        COOKIE,
        AUTHORIZATION,
        ACCEPT_LANGUAGE,
        PROXY_AUTHORIZATION,
    ]);
    let three = DefaultKeyExtractor::new().header(ACCEPT_LANGUAGE);
    let key = |k: &DefaultKeyExtractor| k.key(&parts, Some(b"")).unwrap();
    assert_eq!(key(&one), key(&two));
    assert_eq!(key(&one), key(&three));
}

#[test]
fn streaming_body_has_no_key() {
    let (parts, _) = http::Request::get("http://h/")
        .body(())
        .unwrap()
        .into_parts();
    assert!(DefaultKeyExtractor::new().key(&parts, None).is_none());
}

#[test]
fn default_port_and_case_are_normalised() {
    let a = key(http::Request::get("https://API.example:443/x")
        .body(())
        .unwrap());
    let b = key(http::Request::get("https://api.example/x")
        .body(())
        .unwrap());
    let c = key(http::Request::get("https://api.example:8443/x")
        .body(())
        .unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(c.display(), "GET https://api.example:8443/x");
}

#[test]
fn percent_encoding_is_normalised() {
    let a = key(http::Request::get("http://h/x?q=a%20b").body(()).unwrap());
    let b = key(http::Request::get("http://h/x?q=a+b").body(()).unwrap());
    assert_eq!(a, b);
}

#[test]
fn repeated_parameters_keep_their_order() {
    let a = key(http::Request::get("http://h/x?id=1&id=2").body(()).unwrap());
    let b = key(http::Request::get("http://h/x?id=2&id=1").body(()).unwrap());
    assert_ne!(a, b);
}

#[test]
fn method_body_and_headers_matter() {
    let get = key(http::Request::get("http://h/x").body(()).unwrap());
    let head = key(http::Request::head("http://h/x").body(()).unwrap());
    assert_ne!(get, head);
    let json = key(http::Request::get("http://h/x")
        .header("accept", "application/json")
        .body(())
        .unwrap());
    assert_ne!(get, json);
    // A header that is not configured does not matter.
    let ua = key(http::Request::get("http://h/x")
        .header("user-agent", "x")
        .body(())
        .unwrap());
    assert_eq!(get, ua);
    let (parts, _) = http::Request::post("http://h/x")
        .body(())
        .unwrap()
        .into_parts();
    let keys = DefaultKeyExtractor::new();
    assert_ne!(keys.key(&parts, Some(b"a")), keys.key(&parts, Some(b"b")));
}

#[test]
fn secrets_never_appear_in_display() {
    let k = key(http::Request::get("http://h/x?token=t0k&API_KEY=abc&q=1")
        .header("authorization", "Bearer zzz")
        .body(())
        .unwrap());
    assert!(!k.display().contains("t0k"));
    assert!(!k.display().contains("abc"));
    assert!(!k.display().contains("zzz"));
    assert!(!format!("{k:?}").contains("abc"));
}
fn key_of(keys: &DefaultKeyExtractor, req: http::Request<()>) -> Option<RequestKey> {
    let (parts, _) = req.into_parts();
    keys.key(&parts, Some(b""))
}

#[test]
fn query_bytes_that_are_not_utf8_give_distinct_keys() {
    let ff = key(http::Request::get("http://h/x?q=%FF").body(()).unwrap());
    let fe = key(http::Request::get("http://h/x?q=%FE").body(()).unwrap());
    let replacement = key(http::Request::get("http://h/x?q=%EF%BF%BD")
        .body(())
        .unwrap());
    assert_ne!(ff, fe);
    assert_ne!(ff, replacement);
    assert_ne!(fe, replacement);
    assert_eq!(ff.display(), "GET http://h/x?q=%FF");
    // Names too, and the encoding of one byte does not matter.
    let lower = key(http::Request::get("http://h/x?%ff=1").body(()).unwrap());
    let upper = key(http::Request::get("http://h/x?%FF=1").body(()).unwrap());
    let fe_name = key(http::Request::get("http://h/x?%FE=1").body(()).unwrap());
    assert_eq!(lower, upper);
    assert_ne!(lower, fe_name);
    // A lone `%` stays literal.
    let lone = key(http::Request::get("http://h/x?q=%zz%").body(()).unwrap());
    assert_eq!(lone.display(), "GET http://h/x?q=%25zz%25");
}

#[test]
fn url_userinfo_is_keyed_but_never_displayed() {
    let alice = key(http::Request::get("http://alice:pw1@h/x").body(()).unwrap());
    let bob = key(http::Request::get("http://bob:pw2@h/x").body(()).unwrap());
    let nobody = key(http::Request::get("http://h/x").body(()).unwrap());
    let empty = key(http::Request::get("http://@h/x").body(()).unwrap());
    assert_ne!(alice, bob);
    assert_ne!(alice, nobody);
    assert_ne!(empty, nobody);
    assert_eq!(alice.display(), "GET http://h/x");
    assert!(!format!("{alice:?}").contains("pw1"));
}

#[test]
fn every_standard_credential_header_is_keyed() {
    for name in ["authorization", "proxy-authorization", "cookie"] {
        let with = |value: &str| {
            key(http::Request::get("http://h/x")
                .header(name, value)
                .body(())
                .unwrap())
        };
        let (a, b) = (with("user-a"), with("user-b"));
        assert_ne!(a, b, "{name}");
        assert_eq!(a.display(), "GET http://h/x", "{name}");
    }
}

#[test]
fn secret_looking_query_parameters_are_masked_by_default() {
    // Common secret parameters outside the exact list: OAuth refresh and id tokens, S3
    // pre-signed URLs, Azure SAS signatures, GitLab tokens, Firebase `auth`.
    let secret = "http://h/x?refresh_token=S1&X-Amz-Signature=S2&X-Amz-Credential=S3\
                  &X-Amz-Security-Token=S4&sig=S5&private-token=S6&auth=S7&clientSecret=S8\
                  &page=2";
    let k = key(http::Request::get(secret).body(()).unwrap());
    for n in 1..=8 {
        assert!(
            !k.display().contains(&format!("S{n}")),
            "S{n}: {}",
            k.display()
        );
    }
    assert!(k.display().contains("&page=2&"), "{}", k.display());
    let mut url = reqwest::Url::parse(secret).unwrap();
    redact_url(&mut url, is_default_secret_param);
    let text = redact_secrets(
        &format!("error for url ({secret})"),
        is_default_secret_param,
    );
    for shown in [url.as_str(), &*text] {
        for n in 1..=8 {
            assert!(!shown.contains(&format!("S{n}")), "S{n}: {shown}");
        }
        assert!(shown.contains("page=2"), "{shown}");
    }
    // Ordinary names stay readable.
    for name in ["page", "limit", "q", "keyword", "author", "monkey"] {
        assert!(!is_default_secret_param(name), "{name}");
    }
}

#[test]
fn a_host_header_is_keyed_in_any_case() {
    let on = |host: &str| {
        key(http::Request::get("http://10.0.0.1/x")
            .header("host", host)
            .body(())
            .unwrap())
    };
    let none = key(http::Request::get("http://10.0.0.1/x").body(()).unwrap());
    assert_ne!(on("a.example"), on("b.example"));
    assert_ne!(on("a.example"), none);
    assert_eq!(on("a.example"), on("A.Example"));
    assert_eq!(on("a.example").display(), none.display());
}

#[test]
fn uncovered_credential_headers_give_no_key() {
    let keys = DefaultKeyExtractor::new();
    for name in [
        "x-api-key",
        "X-Auth-Token",
        "x-session-id",
        "apikey",
        "x-client-secret",
    ] {
        let request = http::Request::get("http://h/x").header(name, "s3cret");
        assert!(key_of(&keys, request.body(()).unwrap()).is_none(), "{name}");
    }
    let harmless = http::Request::get("http://h/x")
        .header("x-request-id", "1")
        .header("user-agent", "u");
    assert!(key_of(&keys, harmless.body(()).unwrap()).is_some());

    // Covered with key_headers: keyed per value.
    let keys = keys.key_headers([HeaderName::from_static("x-api-key")]);
    let with = |value: &str| {
        key_of(
            &keys,
            http::Request::get("http://h/x")
                .header("x-api-key", value)
                .body(())
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(with("a"), with("b"));

    // Declared harmless: shared as if absent.
    let keys = DefaultKeyExtractor::new().not_credential(HeaderName::from_static("x-trace-token"));
    let traced = key_of(
        &keys,
        http::Request::get("http://h/x")
            .header("x-trace-token", "1")
            .body(())
            .unwrap(),
    );
    assert_eq!(
        traced,
        key_of(&keys, http::Request::get("http://h/x").body(()).unwrap())
    );

    // Replacing the keyed headers leaves Authorization uncovered: no key rather than sharing.
    let keys = DefaultKeyExtractor::new().headers([http::header::ACCEPT]);
    let request = http::Request::get("http://h/x").header("authorization", "Bearer a");
    assert!(key_of(&keys, request.body(()).unwrap()).is_none());
}
