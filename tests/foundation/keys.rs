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
