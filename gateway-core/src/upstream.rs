//! The upstream side of a call: how a failed `ForwardingService` call is
//! told apart (never sent, refused before processing, maybe processed),
//! which decides ejection and retries.

/// What a failed attempt says about the request and the instance; decides
/// ejection and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: the request was never sent. The instance is ejected
    /// as unreachable; another one may be tried.
    Unreachable,
    /// HTTP/2 `REFUSED_STREAM`: the instance refused the request before any
    /// processing (RFC 9113 8.7), so another one may be tried. Not held
    /// against the instance (it sheds load or is going away).
    Refused,
    /// gRPC `UNAVAILABLE` from a call that reached the instance, or a stream
    /// cut by the instance's `GOAWAY` (which gRPC treats as `UNAVAILABLE`):
    /// it may have run - h2 reports the same `GOAWAY` error for streams the
    /// server had accepted before closing - so only an idempotent request
    /// may be tried again.
    Unavailable,
    /// Any other failure of a call that reached the instance.
    Failed,
}

pub(crate) fn failure_of(status: &tonic::Status) -> Failure {
    if is_connect_error(status) {
        Failure::Unreachable
    } else if is_refused_stream(status) {
        Failure::Refused
    } else if status.code() == tonic::Code::Unavailable || is_go_away(status) {
        Failure::Unavailable
    } else {
        Failure::Failed
    }
}

/// The source chain of a status, the status excluded.
fn sources(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// Whether the instance reset the stream with `REFUSED_STREAM` (tonic maps
/// it to `UNAVAILABLE`, keeping the h2 error in the source chain).
fn is_refused_stream(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && sources(status).any(|e| {
            e.downcast_ref::<h2::Error>()
                .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM))
        })
}

/// Whether the instance's `GOAWAY` ended the stream (tonic maps its
/// `NO_ERROR` reason to `INTERNAL`).
fn is_go_away(status: &tonic::Status) -> bool {
    sources(status).any(|e| {
        e.downcast_ref::<h2::Error>()
            .is_some_and(|h| h.is_go_away() && h.is_remote())
    })
}

/// Whether the failure happened while connecting, so the request was never
/// sent: tonic's `ConnectError` (what its connector wraps every connect-phase
/// failure in, connect timeout included), an `io::Error` of a
/// refused/unreachable connection in the source chain, or tonic's
/// connect-phase error text.
pub(crate) fn is_connect_error(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    sources(status).any(|e| {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | AddrNotAvailable
                    | HostUnreachable
                    | NetworkUnreachable
                    | TimedOut
            ) {
                return true;
            }
        }
        let text = e.to_string();
        text.contains("tcp connect error")
            || text.contains("connection refused")
            || text.contains("dns error")
    })
}
