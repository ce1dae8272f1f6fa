use super::*;

#[test]
fn service_error_codes_and_buckets() {
    let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
                <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
    assert_eq!(service_error_code(body), Some("NoSuchBucket"));
    assert_eq!(service_error_code("connection reset"), None);
    assert_eq!(service_error_code("<Code>unterminated"), None);
    assert_eq!(bucket_of("s3://b/p/q"), "b");
    assert_eq!(bucket_of("az://c"), "c");
}

#[test]
fn a_not_found_write_or_listing_means_the_bucket_is_missing() {
    let nf = || object_store::Error::NotFound {
        path: "p/k".into(),
        source: "404".into(),
    };
    for op in ["put", "upload", "start upload"] {
        let e = map_error("s3://nb/p", "http://h:9000", op, "k.lock", nf());
        let text = e.to_string();
        assert!(
            text.contains("the bucket \"nb\" does not exist at http://h:9000"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 1);
        // The client's error is kept as the cause.
        assert!(std::error::Error::source(&e).is_some());
    }
    // Reading a missing key is just that.
    let e = map_error("s3://nb/p", "http://h:9000", "get", "k", nf());
    assert!(matches!(e, Error::NotFound(_)), "{e}");
}

#[test]
fn a_timeout_says_so_and_is_retryable() {
    use object_store::client::HttpError;
    let e = object_store::Error::Generic {
        store: "S3",
        source: Box::new(HttpError::new(
            HttpErrorKind::Timeout,
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )),
    };
    let e = map_error("s3://b/p", "http://h:9000", "upload part", "x.dump", e);
    assert!(e.is_retryable());
    let text = e.to_string();
    assert!(
        text.starts_with(
            "storage s3://b/p: upload part x.dump: timed out: http://h:9000 stopped answering"
        ),
        "{text}"
    );
}
