use super::*;

/// A streaming body of `chunks` (no size hint), then `error` if given.
fn stream(chunks: &[&'static str], error: Option<&'static str>) -> reqwest::Body {
    struct Chunks(VecDeque<Result<Bytes, std::io::Error>>);
    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|r| r.map(Frame::data)))
        }
    }
    let mut items: VecDeque<_> = chunks
        .iter()
        .map(|c| Ok(Bytes::from_static(c.as_bytes())))
        .collect();
    if let Some(error) = error {
        items.push_back(Err(std::io::Error::other(error)));
    }
    reqwest::Body::wrap(Chunks(items))
}

/// `error: its source: ...`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        message = format!("{message}: {next}");
        source = next.source();
    }
    message
}

/// Every byte of `body`, or the message of the error that stopped it (with what came before).
async fn drain(mut body: reqwest::Body) -> (Vec<u8>, Option<String>) {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => bytes.extend_from_slice(&frame.into_data().unwrap_or_default()),
            Err(error) => return (bytes, Some(chain(&error))),
        }
    }
    (bytes, None)
}

#[tokio::test]
async fn a_body_within_the_limit_is_buffered_whole() {
    for limit in [6, 100] {
        match buffer(stream(&["ab", "cd", "ef"], None), limit).await {
            Buffered::Complete(bytes) => assert_eq!(bytes, "abcdef"),
            Buffered::Streaming(_) => panic!("6 bytes stream under a limit of {limit}"),
        }
    }
    match buffer(stream(&[], None), 0).await {
        Buffered::Complete(bytes) => assert!(bytes.is_empty()),
        Buffered::Streaming(_) => panic!("an empty body streams"),
    }
}

#[tokio::test]
async fn a_body_over_the_limit_streams_with_its_prefix() {
    // Read until the limit is passed: the chunks read come first, then the rest.
    let Buffered::Streaming(body) = buffer(stream(&["ab", "cd", "ef", "gh"], None), 3).await else {
        panic!("8 bytes buffered under a limit of 3");
    };
    assert_eq!(body.size_hint().lower(), 4, "the prefix read so far");
    assert_eq!(drain(body).await, (b"abcdefgh".to_vec(), None));
    // A size hint over the limit: given back unread.
    let sized = reqwest::Body::from("abcdefgh");
    let Ok(Buffered::Streaming(body)) = buffer_or_fail(sized, 3).await else {
        panic!("8 bytes buffered under a limit of 3");
    };
    assert_eq!(body.as_bytes(), Some(&b"abcdefgh"[..]));
}

#[tokio::test]
async fn an_erroring_body_streams_its_error_or_fails() {
    let Buffered::Streaming(body) = buffer(stream(&["ab", "cd"], Some("reset")), 100).await else {
        panic!("a failed body buffered");
    };
    let (bytes, error) = drain(body).await;
    assert_eq!(bytes, b"abcd");
    assert!(error.is_some_and(|e| e.contains("reset")));
    // Past the limit, the error comes after the rest.
    let Buffered::Streaming(body) = buffer(stream(&["ab", "cd"], Some("reset")), 1).await else {
        panic!("a failed body buffered");
    };
    let (bytes, error) = drain(body).await;
    assert_eq!(bytes, b"abcd");
    assert!(error.is_some_and(|e| e.contains("reset")));

    let Err(error) = buffer_or_fail(stream(&["ab"], Some("reset")), 100).await else {
        panic!("a failed body buffered");
    };
    assert!(chain(&*error).contains("reset"), "{}", chain(&*error));
}

#[test]
fn a_copy_keeps_the_head_and_the_body() {
    #[derive(Clone, Debug, PartialEq)]
    struct Marker;
    let mut request = http::Request::post("http://h/x?a=1")
        .version(http::Version::HTTP_2)
        .header("x-a", "1")
        .body(reqwest::Body::from("payload"))
        .unwrap();
    request.extensions_mut().insert(Marker);
    let copy = copy(&request).unwrap();
    assert_eq!(copy.method(), request.method());
    assert_eq!(copy.uri(), request.uri());
    assert_eq!(copy.version(), http::Version::HTTP_2);
    assert_eq!(copy.headers(), request.headers());
    assert_eq!(copy.extensions().get::<Marker>(), Some(&Marker));
    assert_eq!(copy.body().as_bytes(), Some(&b"payload"[..]));
    // A streaming body cannot be sent twice.
    let streaming = http::Request::new(stream(&["a"], None));
    assert!(super::copy(&streaming).is_none());
}

/// A body whose size hint says "anything up to `u64::MAX`" (a lie, or a way to say "unknown").
fn unbounded_hint(chunks: &[&'static str]) -> reqwest::Body {
    struct Unbounded(VecDeque<Bytes>);
    impl Body for Unbounded {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
        fn size_hint(&self) -> SizeHint {
            let mut hint = SizeHint::new();
            hint.set_upper(u64::MAX);
            hint
        }
    }
    reqwest::Body::wrap(Unbounded(
        chunks
            .iter()
            .map(|c| Bytes::from_static(c.as_bytes()))
            .collect(),
    ))
}

/// The size hint of a body over the limit adds the prefix to the rest's hint without
/// overflowing: a rest whose upper bound is `u64::MAX` made `size_hint` panic (an overflow in
/// debug builds; in release an upper bound below the lower one, which `SizeHint` refuses with a
/// panic), in whatever read the hint (hyper, a caller).
#[tokio::test]
async fn a_size_hint_near_u64_max_does_not_overflow() {
    let Buffered::Streaming(body) = buffer(unbounded_hint(&["abcd", "ef"]), 2).await else {
        panic!("6 bytes buffered under a limit of 2");
    };
    let hint = body.size_hint();
    assert_eq!(hint.lower(), 4);
    assert_eq!(hint.upper(), Some(u64::MAX));
    assert_eq!(drain(body).await, (b"abcdef".to_vec(), None));
}
