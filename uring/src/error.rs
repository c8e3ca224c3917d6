//! Typed errors of the ring: set-up failures name the missing kernel feature.

use std::fmt;

/// A kernel feature the io_uring backend needs, probed in [`crate::Ring::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// io_uring itself (`io_uring_setup`; may be disabled by
    /// `kernel.io_uring_disabled` or a seccomp filter).
    IoUring,
    /// `IORING_REGISTER_PROBE` (Linux 5.6).
    Probe,
    /// An opcode (`IORING_OP_*`), by name.
    Opcode(&'static str),
    /// Provided-buffer rings, `IORING_REGISTER_PBUF_RING` (Linux 5.19).
    BufRing,
    /// Multishot accept, `IORING_ACCEPT_MULTISHOT` (Linux 5.19).
    MultishotAccept,
    /// Multishot recv, `IORING_RECV_MULTISHOT` (Linux 6.0).
    MultishotRecv,
    /// Sparse registered file tables, `IORING_REGISTER_FILES2` (Linux 5.19).
    FixedFiles,
    /// A ring feature flag (`IORING_FEAT_*`), by name.
    RingFeature(&'static str),
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::IoUring => f.write_str("io_uring (io_uring_setup)"),
            Feature::Probe => f.write_str("IORING_REGISTER_PROBE (Linux 5.6)"),
            Feature::Opcode(name) => write!(f, "opcode {name}"),
            Feature::BufRing => {
                f.write_str("provided-buffer rings, IORING_REGISTER_PBUF_RING (Linux 5.19)")
            }
            Feature::MultishotAccept => {
                f.write_str("multishot accept, IORING_ACCEPT_MULTISHOT (Linux 5.19)")
            }
            Feature::MultishotRecv => {
                f.write_str("multishot recv, IORING_RECV_MULTISHOT (Linux 6.0)")
            }
            Feature::FixedFiles => f.write_str("sparse fixed-file tables (Linux 5.19)"),
            Feature::RingFeature(name) => write!(f, "ring feature {name}"),
        }
    }
}

/// Errors of [`crate::Ring`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel lacks something the ring needs; detected at start-up.
    #[error("this kernel's io_uring lacks {feature}: {source}")]
    MissingFeature {
        /// What is missing.
        feature: Feature,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be honoured.
    #[error("invalid io_uring config: {0}")]
    Config(&'static str),
    /// The `Fd` handle names a descriptor already closed (or never adopted).
    #[error("stale fd handle")]
    StaleFd,
    /// The descriptor is being closed; no new operations.
    #[error("fd is closing")]
    Closing,
    /// A multishot operation of this kind is already armed on the fd.
    #[error("a multishot {0} is already armed on this fd")]
    AlreadyArmed(&'static str),
    /// `io_uring_enter` failed.
    #[error("io_uring_enter: {0}")]
    Enter(#[source] std::io::Error),
}
