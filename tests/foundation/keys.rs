//! Property tests of key canonicalisation.

use courteous::{DefaultKeyExtractor, KeyExtractor, RequestKey};
use proptest::prelude::*;

fn key(query: &[(String, String)], authorization: Option<&str>) -> RequestKey {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let mut builder = http::Request::get(format!("https://api.example/api/issues/?{query}"));
    if let Some(auth) = authorization {
        builder = builder.header("authorization", auth);
    }
    let (parts, _) = builder.body(()).unwrap().into_parts();
    DefaultKeyExtractor::new().key(&parts, Some(b"")).unwrap()
}

/// Query parameters with distinct names (repeated names keep their order by design).
fn params() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,12}", 1..8)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
}

proptest! {
    #[test]
    fn any_permutation_of_parameters_gives_one_key(
        params in params(),
        shuffle in any::<prop::sample::Index>(),
        auth in proptest::option::of("[A-Za-z0-9]{1,16}"),
    ) {
        let mut shuffled = params.clone();
        // A rotation and a reversal reach every position across cases.
        let by = shuffle.index(shuffled.len());
        shuffled.rotate_left(by);
        if by % 2 == 1 {
            shuffled.reverse();
        }
        prop_assert_eq!(key(&params, auth.as_deref()), key(&shuffled, auth.as_deref()));
    }

    #[test]
    fn a_changed_value_gives_another_key(
        params in params(),
        which in any::<prop::sample::Index>(),
        suffix in "[a-z0-9]{1,4}",
    ) {
        let mut changed = params.clone();
        let i = which.index(changed.len());
        changed[i].1.push_str(&suffix);
        prop_assert_ne!(key(&params, None), key(&changed, None));
    }

    #[test]
    fn a_changed_authorization_gives_another_key(
        params in params(),
        a in "[A-Za-z0-9]{1,16}",
        b in "[A-Za-z0-9]{1,16}",
    ) {
        prop_assume!(a != b);
        let with_a = key(&params, Some(&format!("Bearer {a}")));
        prop_assert_ne!(&with_a, &key(&params, Some(&format!("Bearer {b}"))));
        prop_assert_ne!(&with_a, &key(&params, None));
        // ...and the header never shows in the display form.
        let without = key(&params, None);
        prop_assert_eq!(with_a.display(), without.display());
    }
}

/// The key of `GET https://api.example/x?q=<raw query value>` with these headers.
fn key_of(query: &str, uri_authority: &str, headers: &[(&str, &str)]) -> Option<RequestKey> {
    let mut builder = http::Request::get(format!("https://{uri_authority}/x?{query}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (parts, _) = builder.body(()).unwrap().into_parts();
    DefaultKeyExtractor::new().key(&parts, Some(b""))
}

/// `bytes` percent-encoded, each byte in upper- or lower-case hex as `lower` says.
fn percent_encoded(bytes: &[u8], lower: &[bool]) -> String {
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if lower.get(i).copied().unwrap_or(false) {
                format!("%{b:02x}")
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    /// Query values are compared as raw bytes: any two different byte strings (UTF-8 or not)
    /// are two keys, and the spelling of the percent-encoding does not matter.
    #[test]
    fn query_values_are_compared_as_bytes(
        a in prop::collection::vec(any::<u8>(), 0..8),
        b in prop::collection::vec(any::<u8>(), 0..8),
        lower in prop::collection::vec(any::<bool>(), 8),
    ) {
        let upper_a = key_of(&format!("q={}", percent_encoded(&a, &[])), "h", &[]).unwrap();
        let mixed_a = key_of(&format!("q={}", percent_encoded(&a, &lower)), "h", &[]).unwrap();
        prop_assert_eq!(&upper_a, &mixed_a);
        let key_b = key_of(&format!("q={}", percent_encoded(&b, &[])), "h", &[]).unwrap();
        prop_assert_eq!(a == b, upper_a == key_b);
    }

    /// Every standard credential (Authorization, Proxy-Authorization, Cookie, URL userinfo)
    /// changes the key and never shows in its display form.
    #[test]
    fn every_credential_changes_the_key_and_stays_hidden(
        a in "[A-Za-z0-9]{6,16}",
        b in "[A-Za-z0-9]{6,16}",
        which in 0..4usize,
    ) {
        prop_assume!(a != b);
        let with = |secret: &str| match which {
            0 => key_of("", "h", &[("authorization", secret)]),
            1 => key_of("", "h", &[("proxy-authorization", secret)]),
            2 => key_of("", "h", &[("cookie", secret)]),
            _ => key_of("", &format!("user:{secret}@h"), &[]),
        }
        .unwrap();
        let (key_a, key_b) = (with(&a), with(&b));
        let none = key_of("", "h", &[]).unwrap();
        prop_assert_ne!(&key_a, &key_b);
        prop_assert_ne!(&key_a, &none);
        prop_assert_eq!(key_a.display(), none.display());
        let debug = format!("{:?}", key_a);
        prop_assert!(!debug.contains(&a));
    }

    /// A header whose name contains a credential pattern gives no key unless it is keyed.
    #[test]
    fn uncovered_credential_headers_are_never_shared(
        prefix in "(x-)?[a-z]{0,6}-?",
        pattern in prop::sample::select(courteous::key::CREDENTIAL_HEADER_PATTERNS),
        suffix in "(-[a-z]{1,6})?",
        value in "[A-Za-z0-9]{1,16}",
    ) {
        let name = format!("{prefix}{pattern}{suffix}");
        // The credentials the default key covers (`cookie` can be drawn) are shared per value.
        prop_assume!(!["authorization", "cookie", "proxy-authorization"].contains(&name.as_str()));
        let header = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        let keyed = DefaultKeyExtractor::new().key_headers([header.clone()]);
        let (parts, _) = http::Request::get("https://h/x")
            .header(header, value.as_str())
            .body(())
            .unwrap()
            .into_parts();
        prop_assert!(DefaultKeyExtractor::new().key(&parts, Some(b"")).is_none(), "{}", name);
        prop_assert!(keyed.key(&parts, Some(b"")).is_some());
    }
}
