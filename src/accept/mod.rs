//! From a TCP connection to a session: the shard's listener, the HTTP upgrade request and its
//! refusals, admission (limits, JWT, slots), and the handshake that ties them together.

pub mod admit;
pub mod handshake;
pub mod listener;
pub mod request;

pub use admit::ConnSlot;
