//! Cases as data: what to send a backend and what to expect back.
//!
//! A case file (`cases/*.toml`) holds `[[case]]` tables; see
//! `cases/README.md` for every field. Parsing is strict
//! (`deny_unknown_fields`), so a misspelt expectation fails loudly instead of
//! checking nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A case file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid case file.
    #[error("{path}: {source}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// Two cases have the same name.
    #[error("{path}: case {name:?} is defined twice")]
    Duplicate {
        /// The path.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
}

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    case: Vec<Case>,
}

/// Which RPC (or service) a case calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// `ForwardingService.Send`.
    Send,
    /// `ForwardingService.Stream`.
    Stream,
    /// `grpc.health.v1.Health/Check`.
    Health,
}

impl Rpc {
    /// Lower-case name, as in case files.
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::Send => "send",
            Rpc::Stream => "stream",
            Rpc::Health => "health",
        }
    }
}

/// One RPC or several: a case written once for `Send` and `Stream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Rpcs {
    /// One.
    One(Rpc),
    /// Each of these, as separate runs named `<case> [<rpc>]`.
    Many(Vec<Rpc>),
}

/// One case as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique name, e.g. `headers/duplicates-keep-order`.
    pub name: String,
    /// What the case shows, for a reader of a failure.
    #[serde(default)]
    pub about: String,
    /// The RPC(s) called.
    pub rpc: Rpcs,
    /// The request.
    #[serde(default)]
    pub request: RequestSpec,
    /// The health-check service name (`rpc = "health"`).
    #[serde(default)]
    pub health_service: String,
    /// What must come back.
    #[serde(default)]
    pub expect: Expect,
    /// A follow-up look at `/conformance/calls/{id}`.
    pub call: Option<CallCheck>,
}

/// A header or trailer field: `value` as text or `hex` as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Value as UTF-8 text.
    pub value: Option<String>,
    /// Value as hex bytes (for obs-text), instead of `value`.
    pub hex: Option<String>,
}

impl Field {
    /// The value's bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.value, &self.hex) {
            (Some(v), None) => Ok(v.clone().into_bytes()),
            (None, Some(h)) => crate::hex_decode(h),
            (None, None) => Ok(Vec::new()),
            (Some(_), Some(_)) => Err(format!("field {:?}: both value and hex", self.name)),
        }
    }
}

/// The request of a case. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method (default `GET`).
    pub method: Option<String>,
    /// Raw path (default `/conformance/echo`).
    pub path: Option<String>,
    /// Raw query without `?`.
    #[serde(default)]
    pub query: String,
    /// Whether the target had a `?` (default: the query is not empty).
    pub has_query: Option<bool>,
    /// Headers in order.
    #[serde(default)]
    pub headers: Vec<Field>,
    /// Body as text.
    pub body: Option<String>,
    /// Body as hex bytes.
    pub body_hex: Option<String>,
    /// Body: the pattern of this many bytes.
    pub body_pattern: Option<usize>,
    /// Trailers in order.
    #[serde(default)]
    pub trailers: Vec<Field>,
    /// `Stream`: the body in this many `body` frames (default 1).
    pub chunks: Option<usize>,
    /// `context.deadline_ms` and `grpc-timeout`; the kit also gives up on
    /// the call then, as a gateway would.
    pub deadline_ms: Option<u64>,
    /// Cancel the call this long after it started.
    pub cancel_after_ms: Option<u64>,
    /// `Stream`: don't read the answer after its head for this long (the
    /// call check then runs while the answer waits), then cancel.
    pub stall_after_head_ms: Option<u64>,
    /// `Stream`: send these frames in this order instead of the usual
    /// `head`, `body`..., `end` (malformed sequences): each of `head`,
    /// `head_with_trailers`, `body`, `end`, `message`, `close`.
    pub frames: Option<Vec<String>>,
}

/// The HTTP answer expected, and the gRPC status.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// gRPC status codes allowed (snake case, e.g. `ok`,
    /// `invalid_argument`); default `["ok"]`. `not_ok` allows any failure.
    pub grpc: Option<Vec<String>>,
    /// `Stream`: a head must arrive before the failure.
    pub head_then_fail: Option<bool>,
    /// HTTP status.
    pub status: Option<u32>,
    /// Response headers, restricted to the names listed here, must equal
    /// this list (values, order, duplicates).
    pub headers: Option<Vec<Field>>,
    /// Response trailers, checked the same way.
    pub trailers: Option<Vec<Field>>,
    /// The body is the pattern of this many bytes.
    pub body_pattern: Option<usize>,
    /// The body is exactly this text.
    pub body: Option<String>,
    /// `Stream`: number of non-empty body pieces (a body in the head
    /// counts as one).
    pub body_frames: Option<usize>,
    /// `Stream`: the first body byte arrives this many ms after the call
    /// started, at most.
    pub first_body_within_ms: Option<u64>,
    /// `Stream`: the last body byte arrives this many ms after the call
    /// started, at least (with `first_body_within_ms`: the answer streamed).
    pub last_body_after_ms: Option<u64>,
    /// The call ends (answer or failure) within this many ms.
    pub within_ms: Option<u64>,
    /// The body is an echo; these keys must equal the echo's. `headers`
    /// and `trailers` are compared restricted to the names listed. The
    /// echo's body length and digest are always checked against what was
    /// sent.
    pub echo: Option<toml::Table>,
    /// `rpc = "health"`: the serving status (`serving`, `not_serving`).
    pub health: Option<String>,
}

/// A look at `GET /conformance/calls/{id}` after the call (or, with
/// `stall_after_head_ms`, while its answer waits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallCheck {
    /// The id sent as `x-conformance-id`; the kit makes it unique per run.
    pub id: String,
    /// The state expected.
    pub state: String,
    /// Poll until the state is reached, this long at most (default 2000).
    pub within_ms: Option<u64>,
    /// `body_bytes_sent` must not exceed this (backpressure).
    pub max_body_bytes_sent: Option<u64>,
}

/// One run of a case: a case with one RPC.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The name printed (with ` [send]`/` [stream]` when the case has several).
    pub name: String,
    /// The RPC of this run.
    pub rpc: Rpc,
    /// The case.
    pub case: Case,
}

/// Loads every `*.toml` under `dir` (sorted by file name), expanding cases
/// that name several RPCs.
pub fn load_dir(dir: &Path) -> Result<Vec<Planned>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        for planned in parse(&text).map_err(|source| LoadError::Parse {
            path: path.clone(),
            source,
        })? {
            if out.iter().any(|p: &Planned| p.name == planned.name) {
                return Err(LoadError::Duplicate {
                    path,
                    name: planned.name,
                });
            }
            out.push(planned);
        }
    }
    Ok(out)
}

/// Parses one case file.
pub fn parse(text: &str) -> Result<Vec<Planned>, toml::de::Error> {
    let file: File = toml::from_str(text)?;
    let mut out = Vec::new();
    for case in file.case {
        match case.rpc.clone() {
            Rpcs::One(rpc) => out.push(Planned {
                name: case.name.clone(),
                rpc,
                case,
            }),
            Rpcs::Many(rpcs) => {
                for rpc in rpcs {
                    out.push(Planned {
                        name: format!("{} [{}]", case.name, rpc.as_str()),
                        rpc,
                        case: case.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}
