//! What `bench-backend`, `loadgen` and `streambench` share: the byte pattern of
//! uploads and downloads, the chunk size, the SSE event format, the clock
//! and a process's own CPU time.
//!
//! The pattern is byte `i` = `(i * 31 + 7) mod 251`. It depends only on
//! `i mod 251`, so any chunk of it is a slice of one small table: the
//! generator never holds a body in memory, and a reader checks what it
//! receives with a `memcmp` against the same table instead of hashing.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Size of the body chunks both sides produce (64 KiB).
pub const CHUNK: usize = 64 * 1024;

/// Period of the pattern.
const PERIOD: usize = 251;

/// Byte `i` of the pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (((i % PERIOD as u64) * 31 + 7) % PERIOD as u64) as u8
}

/// The pattern, as shared slices.
#[derive(Clone)]
pub struct Pattern {
    /// Bytes 0 .. PERIOD + CHUNK of the pattern.
    table: Bytes,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    pub fn new() -> Self {
        let table: Vec<u8> = (0..(PERIOD + CHUNK) as u64).map(pattern_byte).collect();
        Self {
            table: Bytes::from(table),
        }
    }

    /// `len` (at most `CHUNK`) bytes of the pattern starting at byte `offset`,
    /// without copying.
    pub fn chunk(&self, offset: u64, len: usize) -> Bytes {
        assert!(len <= CHUNK, "chunk of {len} bytes > {CHUNK}");
        let start = (offset % PERIOD as u64) as usize;
        self.table.slice(start..start + len)
    }

    /// Whether `data` is the pattern from byte `offset` on.
    pub fn matches(&self, mut offset: u64, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            let start = (offset % PERIOD as u64) as usize;
            if data[..n] != self.table[start..start + n] {
                return false;
            }
            data = &data[n..];
            offset += n as u64;
        }
        true
    }

    /// SHA-256 of the first `len` bytes of the pattern, as lower-case hex.
    pub fn sha256_hex(&self, len: u64) -> String {
        let mut h = Sha256::new();
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            h.update(self.chunk(off, n));
            off += n as u64;
        }
        hex(&h.finalize())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Wall-clock time (CLOCK_REALTIME) in nanoseconds since the Unix epoch: the
/// backend stamps SSE events with it and the client compares on receipt (same
/// machine, same clock).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One SSE event carrying the time it was sent: `data: <unix nanos>\n\n`.
pub fn sse_event(nanos: u64) -> Bytes {
    Bytes::from(format!("data: {nanos}\n\n"))
}

/// Value of `key` in a query string (`a=1&b=2`), undecoded.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

/// What a request path asks the backend for, by its last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST .../upload`: hash the body, answer `{"bytes":N,"sha256":"..."}`.
    Upload,
    /// `GET .../download?bytes=N`: N bytes of the pattern.
    Download,
    /// `GET .../sse?count=N&interval_us=U`: N timestamped events.
    Sse,
    /// Anything else: the fixed unary answer.
    Other,
}

impl Endpoint {
    pub fn of(path: &str) -> Self {
        match path.rsplit('/').next().unwrap_or("") {
            "upload" => Self::Upload,
            "download" => Self::Download,
            "sse" => Self::Sse,
            _ => Self::Other,
        }
    }
}

/// The JSON answer of an upload.
pub fn upload_answer(bytes: u64, sha256_hex: &str) -> Bytes {
    Bytes::from(format!(r#"{{"bytes":{bytes},"sha256":"{sha256_hex}"}}"#))
}

/// Header every streamed answer of the backend carries, saying which of its
/// servers produced it: `stream` (ForwardingService.Stream) or `http` (the
/// plain HTTP server). Lets the client tell that a gateway really used
/// `Stream` rather than buffering through `Send`.
pub const VIA_HEADER: &str = "x-bench-via";

/// CPU time (user + system, all threads) this process used so far, from
/// /proc/self/stat (USER_HZ = 100 on Linux); `None` elsewhere. Lets the
/// caller tell the benchmark's own CPU use from other load on the machine.
pub fn own_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_slices_agree_with_the_formula() {
        let p = Pattern::new();
        for off in [0u64, 1, 250, 251, 252, 1 << 20, (1 << 30) + 17] {
            let c = p.chunk(off, 1000);
            for (k, b) in c.iter().enumerate() {
                assert_eq!(*b, ((off + k as u64) * 31 + 7).rem_euclid(251) as u8);
            }
            assert!(p.matches(off, &c));
            assert!(!p.matches(off + 1, &c));
        }
    }

    #[test]
    fn sha_of_pattern_matches_one_shot_hash() {
        let p = Pattern::new();
        let n = 3 * CHUNK as u64 + 5;
        let all: Vec<u8> = (0..n).map(pattern_byte).collect();
        assert_eq!(p.sha256_hex(n), hex(&Sha256::digest(&all)));
    }

    #[test]
    fn query_and_endpoints() {
        assert_eq!(
            query_param("count=5&interval_us=10", "interval_us"),
            Some("10")
        );
        assert_eq!(query_param("count", "count"), Some(""));
        assert_eq!(query_param("", "count"), None);
        assert_eq!(Endpoint::of("/upload"), Endpoint::Upload);
        assert_eq!(Endpoint::of("/bench/download"), Endpoint::Download);
        assert_eq!(Endpoint::of("/sse"), Endpoint::Sse);
        assert_eq!(Endpoint::of("/bench/x"), Endpoint::Other);
    }
}
