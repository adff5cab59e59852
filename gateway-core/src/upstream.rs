//! The upstream side of a call: the gateway's own HTTP/2 connections to
//! instances ([`Pool`], dialled through a [`Connect`]), and how a failed
//! `ForwardingService` call is told apart (never sent, refused before
//! processing, maybe processed), which decides ejection and retries.
//!
//! Every classification here is by error type: the connect phase reports
//! [`UpstreamError::Connect`] (the pool's own error, whatever the
//! connector), a request the connection could not take (h2's `poll_ready`
//! or `send_request` failed: closed, `GOAWAY`) is
//! [`UpstreamError::NotSent`], and a
//! stream the instance reset with `REFUSED_STREAM` is
//! [`UpstreamError::Refused`]; failures after that are h2 errors with
//! their reasons (h2's own errors: the pool runs h2's client directly).

mod body;
mod connect;
mod pool;

use std::sync::Arc;

pub use connect::{BoxIo, Connect, Io, TcpConnector};
pub use pool::{Pool, PoolSettings, Upstream};

/// Why a call never reached an instance, as the pool reports it (in the
/// source of the `tonic::Status` the call fails with, code `UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect or TLS
    /// handshake failure, connect timeout): the request was never sent.
    #[error("could not connect to {address}: {source}")]
    Connect {
        /// The instance's address.
        address: Arc<str>,
        /// What the connector (or the HTTP/2 handshake) said.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed or was going away (`GOAWAY`) before the request
    /// was written to it, twice in a row: never sent.
    #[error("the connection to {address} closed before the request was sent: {source}")]
    NotSent {
        /// The instance's address.
        address: Arc<str>,
        /// h2's reason.
        #[source]
        source: h2::Error,
    },
    /// The instance reset the stream with `REFUSED_STREAM`: it refused the
    /// request before any processing (RFC 9113 8.7).
    #[error("{address} refused the stream before processing it (REFUSED_STREAM)")]
    Refused {
        /// The instance's address.
        address: Arc<str>,
    },
}

impl From<UpstreamError> for tonic::Status {
    fn from(e: UpstreamError) -> Self {
        let mut status = tonic::Status::unavailable(e.to_string());
        status.set_source(Arc::new(e));
        status
    }
}

/// What a failed attempt says about the request and the instance; decides
/// ejection and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection: the request was never sent. The instance is ejected
    /// as unreachable; another one may be tried.
    Unreachable,
    /// HTTP/2 `REFUSED_STREAM`, or a connection that closed (`GOAWAY`)
    /// before the request was written to it: the instance did not process
    /// the request (RFC 9113 8.7), so another one may be tried. Not held
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
    match sources(status).find_map(|e| e.downcast_ref::<UpstreamError>()) {
        Some(UpstreamError::Connect { .. }) => return Failure::Unreachable,
        Some(UpstreamError::NotSent { .. } | UpstreamError::Refused { .. }) => {
            return Failure::Refused;
        }
        None => {}
    }
    if is_refused_stream(status) {
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

/// The h2 error in the source chain of `e` (itself included), if any.
pub(crate) fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    std::iter::successors(Some(e), |e| e.source()).find_map(|e| e.downcast_ref::<h2::Error>())
}

/// Whether the instance reset the stream with `REFUSED_STREAM` (what
/// reaches a call through tonic keeps the h2 error in the source chain).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn failures_are_classified_by_type_not_text() {
        let connect: tonic::Status = UpstreamError::Connect {
            address: "a:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
        .into();
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert_eq!(failure_of(&connect), Failure::Unreachable);
        let refused: tonic::Status = UpstreamError::Refused {
            address: "a:1".into(),
        }
        .into();
        assert_eq!(failure_of(&refused), Failure::Refused);
        // Through tonic's own conversion (a boxed service error).
        let boxed =
            tonic::Status::from_error(Box::new(tonic::Status::from(UpstreamError::Connect {
                address: "a:1".into(),
                source: io::Error::other("tls handshake"),
            })));
        assert_eq!(failure_of(&boxed), Failure::Unreachable);
        // Text that looks like a connect error is not one.
        let text = tonic::Status::unavailable("tcp connect error: connection refused");
        assert_eq!(failure_of(&text), Failure::Unavailable);
        let io_refused =
            tonic::Status::from_error(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_ne!(failure_of(&io_refused), Failure::Unreachable);
        // An h2 REFUSED_STREAM that reaches tonic directly.
        let h2_refused =
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert_eq!(failure_of(&h2_refused), Failure::Refused);
        assert_eq!(
            failure_of(&tonic::Status::internal("boom")),
            Failure::Failed
        );
    }
}

#[cfg(test)]
mod stack_tests;
