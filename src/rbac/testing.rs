//! What the mock-API tests (tower-test) of every component share: the RBAC check of each
//! request, its query and JSON body, and a JSON assertion. Test-only; in the lowest layer so
//! that the operator's, the kubernetes backend's and the hub's tests use one copy.

use std::collections::BTreeMap;

use http::Request;
use kube::client::Body;
use serde_json::Value;

/// Asserts JSON equality, printing both sides pretty on failure.
pub fn assert_json_eq(actual: &Value, expected: &Value) {
    assert!(
        actual == expected,
        "JSON differs\n--- actual\n{}\n--- expected\n{}",
        serde_json::to_string_pretty(actual).unwrap_or_default(),
        serde_json::to_string_pretty(expected).unwrap_or_default()
    );
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8 query")
}

/// A request's query as a sorted map, percent-decoded (shared by the mock-API tests).
pub fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The JSON body of a request (`Null` when empty).
pub async fn json_body(request: Request<Body>) -> Value {
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request body is JSON")
    }
}

/// Asserts that the chart's RBAC, as [`crate::CALLS`] describes it, lets `component` make
/// `request` (a new call without its row in the table fails every mock scenario making it).
pub fn assert_granted_to(component: crate::rbac::Component, request: &Request<Body>) {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let needed = crate::rbac::needed(
        request.method().as_str(),
        request.uri().path(),
        &parse_query(request.uri().query()),
        content_type,
    )
    .unwrap_or_else(|| {
        panic!(
            "not a resource request: {} {}",
            request.method(),
            request.uri()
        )
    });
    if let Err(missing) = crate::rbac::granted(component, &needed) {
        panic!("{} {}: {missing}", request.method(), request.uri());
    }
}
