//! The multiplexer: many channels over one encrypted TCP link.
//!
//! Nothing here knows about servers, SNI or tokens.

pub(crate) mod buffer;
pub mod channel;
pub mod codec;
pub mod config;
pub mod frame;
pub(crate) mod inbox;
pub mod multiplexer;
pub(crate) mod outbox;
pub(crate) mod queue;
// Not part of the stable API: public so that tools forwarding sockets the
// same way (the benchmark's splicing relay) share one implementation.
#[doc(hidden)]
pub mod splice;

pub use channel::{Channel, ChannelEnd};
pub use codec::{Frame, FrameDecoder, FrameEncoder};
pub use config::MuxConfig;
pub use frame::{ChannelId, Flow, FrameHeader, HEADER_SIZE};
pub use multiplexer::{LinkEnd, LinkStats, Multiplexer};
