//! A thread-per-core WebSocket push gateway on io_uring (glommio).
//!
//! Data flows one way: accept (`listener`) -> handshake and auth (`handshake`, `auth`) -> `session`
//! -> shard `router` -> sockets; sources (HTTP publish through the `bus`, client publish) -> `router`.
//! See docs/ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn;
pub mod fuzz;
pub mod handshake;
pub mod history;
pub mod kafka;
pub mod listener;
pub mod mesh;
pub mod message;
pub mod metrics;
pub mod outq;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;
pub mod shard;
pub mod users;
