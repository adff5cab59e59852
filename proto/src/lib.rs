//! The forwarding contract, generated from `proto/forwarding/v1/*.proto`.
//!
//! * [`forwarding::v1::ForwardingService`]: the one service every backend implements.
//! * [`forwarding::v1::RegistryService`]: registration with any gateway replica.
//! * [`forwarding::v1::SyncEvent`]: what replicas tell each other about registrations.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Package `forwarding`.
pub mod forwarding {
    /// Version 1 of the contract.
    // Generated; the .proto files carry the documentation, written for
    // readers of the .proto in any language rather than for rustdoc lists.
    #[allow(
        missing_docs,
        clippy::doc_lazy_continuation,
        clippy::doc_overindented_list_items
    )]
    pub mod v1 {
        tonic::include_proto!("forwarding.v1");
    }
}

pub use forwarding::v1;

/// Contract version carried in `ForwardingReq.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

pub mod convert;
