//! From a TCP connection to a session: the shard's listener, the HTTP upgrade, and admission.

pub mod admit;
pub mod handshake;
pub mod listener;

pub use admit::ConnSlot;
