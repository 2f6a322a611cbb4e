//! Requests to a mount's control socket (`twinfs::control::parse_request`),
//! raw bytes as the line a client sends. Checked: a request that parses
//! serializes to a line that parses to the same request; anything else is an
//! error, never a panic.

use twinfs::control::{parse_request, Request};

/// Entry point.
pub fn run(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = parse_request(line) else {
        return;
    };
    let encoded = serde_json::to_string(&req).expect("a request serializes");
    let again: Request = parse_request(&encoded).expect("a serialized request parses");
    assert_eq!(
        serde_json::to_value(&again).expect("value"),
        serde_json::to_value(&req).expect("value")
    );
}
