//! Plain-data conversions between `http` types and the contract messages.
//!
//! These carry no gateway policy (no hop-by-hop filtering, no forwarded
//! headers): the gateway applies policy on top, and the service SDK uses them
//! as they are. Kept here so the gateway and the SDK share one definition.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::v1::{Header, HttpVersion};

/// A header name or value that HTTP does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHeader {
    /// The offending field name, lossily decoded.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header {:?}: {}", self.name, self.reason)
    }
}

impl std::error::Error for InvalidHeader {}

/// Copies a header map into the ordered wire list. `HeaderMap` keeps the
/// order of values per name; that is the order HTTP gives meaning to.
pub fn headers_to_wire(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
        .collect()
}

/// Builds a header map from the wire list, refusing names or values HTTP
/// does not allow (CR, LF or NUL in a value, a malformed name) and more
/// fields than a `HeaderMap` holds.
pub fn headers_from_wire(list: &[Header]) -> Result<HeaderMap, InvalidHeader> {
    let mut map = map_for(list);
    for h in list {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| InvalidHeader {
            name: h.name.clone(),
            reason: "invalid header name",
        })?;
        let value = HeaderValue::from_maybe_shared(h.value.clone()).map_err(|_| InvalidHeader {
            name: h.name.clone(),
            reason: "invalid header value (control characters are not allowed)",
        })?;
        try_append(&mut map, name, value, h)?;
    }
    Ok(map)
}

/// An empty map sized for `list`. `HeaderMap::with_capacity` panics past
/// its limit of 32,768 fields, and a peer's message can list more: such a
/// list then fails in [`try_append`] instead.
pub fn map_for(list: &[Header]) -> HeaderMap {
    HeaderMap::try_with_capacity(list.len()).unwrap_or_default()
}

/// `HeaderMap::append`, which panics past 32,768 fields, as an error.
pub fn try_append(
    map: &mut HeaderMap,
    name: HeaderName,
    value: HeaderValue,
    h: &Header,
) -> Result<(), InvalidHeader> {
    map.try_append(name, value)
        .map(drop)
        .map_err(|_| InvalidHeader {
            name: h.name.clone(),
            reason: "too many header fields (HTTP allows 32768)",
        })
}

/// Maps an `http::Version` to the wire enum.
pub fn version_to_wire(v: http::Version) -> HttpVersion {
    match v {
        http::Version::HTTP_09 => HttpVersion::Http09,
        http::Version::HTTP_10 => HttpVersion::Http10,
        http::Version::HTTP_11 => HttpVersion::Http11,
        http::Version::HTTP_2 => HttpVersion::Http2,
        http::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Unspecified,
    }
}

/// Maps the wire enum back; unspecified means HTTP/1.1.
pub fn version_from_wire(v: HttpVersion) -> http::Version {
    match v {
        HttpVersion::Http09 => http::Version::HTTP_09,
        HttpVersion::Http10 => http::Version::HTTP_10,
        HttpVersion::Http2 => http::Version::HTTP_2,
        HttpVersion::Http3 => http::Version::HTTP_3,
        HttpVersion::Http11 | HttpVersion::Unspecified => http::Version::HTTP_11,
    }
}

/// Splits a request target into the raw path and query, exactly as received.
pub fn split_target(uri: &http::Uri) -> (&str, Option<&str>) {
    match uri.path_and_query() {
        Some(pq) => (pq.path(), pq.query()),
        None => ("/", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_headers_survive_in_order() {
        let mut map = HeaderMap::new();
        map.append("set-cookie", HeaderValue::from_static("a=1"));
        map.append("x-other", HeaderValue::from_static("x"));
        map.append("set-cookie", HeaderValue::from_static("b=2"));
        let wire = headers_to_wire(&map);
        let back = headers_from_wire(&wire).unwrap();
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(back.len(), 3);
    }

    #[test]
    fn obs_text_values_are_bytes() {
        let wire = vec![Header {
            name: "x-latin1".into(),
            value: Bytes::from_static(b"caf\xe9"),
        }];
        let map = headers_from_wire(&wire).unwrap();
        assert_eq!(map["x-latin1"].as_bytes(), b"caf\xe9");
    }

    #[test]
    fn control_characters_are_refused_with_the_name() {
        let wire = vec![Header {
            name: "x-evil".into(),
            value: Bytes::from_static(b"a\r\nb: c"),
        }];
        let err = headers_from_wire(&wire).unwrap_err();
        assert_eq!(err.name, "x-evil");
    }
}
