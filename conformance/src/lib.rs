//! The conformance kit of the forwarding contract.
//!
//! * [`case`]: cases as data (`cases/*.toml`);
//! * [`run`]: runs them against a backend over gRPC, the way a gateway
//!   calls it, and says what differed;
//! * [`gateway`]: the same cases over HTTP through a gateway, to the
//!   reference backend registered with it;
//! * [`lifecycle`]: registration, renewal, re-registration after a
//!   gateway restart, deregistration on SIGTERM;
//! * [`reference`]: the conformance behaviour
//!   (`proto/proto/forwarding/v1/CONFORMANCE.md`) on the Rust service SDK,
//!   the reference every other implementation is compared with.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use sha2::{Digest, Sha256};

pub mod bench;
pub mod case;
pub mod gateway;
pub mod lifecycle;
pub mod reference;
pub mod run;

/// The pattern's period: prime, so power-of-two parts out of order change
/// the digest.
const PATTERN_PERIOD: usize = 251;

/// `len` bytes of the pattern, starting at byte `offset` of it: byte `i` is
/// `i mod 251`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
}

/// Whether `bytes` is the pattern starting at `offset`.
pub fn is_pattern(offset: usize, bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, b)| usize::from(*b) == (offset + i) % PATTERN_PERIOD)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Hex (either case) to bytes.
pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex {s:?}: odd length"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("hex {s:?}: not hex at {i}"))
        })
        .collect()
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parts_join_up() {
        let whole = pattern(0, 1000);
        assert_eq!(whole[250], 250);
        assert_eq!(whole[251], 0);
        assert_eq!([pattern(0, 300), pattern(300, 700)].concat(), whole);
        assert!(is_pattern(0, &whole));
        assert!(is_pattern(300, &whole[300..]));
        assert!(!is_pattern(1, &whole));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(b"\x00\xff\xe9a"), "00ffe961");
        assert_eq!(hex_decode("00FFe961").unwrap(), b"\x00\xff\xe9a");
        assert!(hex_decode("abc").is_err());
        assert!(hex_decode("zz").is_err());
    }
}
