//! A thread-per-core WebSocket push gateway on io_uring (glommio).
//!
//! The folders follow a connection's path and a message's path (docs/ARCHITECTURE.md):
//!
//! - `server`, `executor`, `shard`, `node`: the process, one executor per core, its state, what they share;
//! - `accept/`: the listener, the HTTP upgrade, admission (limits, JWT via `auth`, slots);
//! - `session/`: one connection's task (codec, requests, writes, timers); `conn` and `outq` are
//!   what the router sees of it: a waker and a bounded queue of shared frames; `coalesce` the
//!   shard's timer that holds message frames for `session.write_delay_ms`;
//! - `route/`: membership, sequencing and history, recovery, fan-out (no I/O of its own);
//! - `mesh`: messages between shards; sources: `bus` (admin to shard), `kafka/`, client publishes;
//! - `admin`, `metrics`, `protocol`, `message`, `deflate`, `topology`, `config`; `presence` (the
//!   presence topic's records, other nodes' members); `fuzz` for the fuzz targets.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod bus;
pub mod coalesce;
pub mod config;
pub mod config_commands;
pub mod conn;
pub mod deflate;
pub mod executor;
pub mod fuzz;
pub mod kafka;
pub mod mesh;
pub mod message;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod outq;
pub mod presence;
pub mod protocol;
pub mod route;
pub mod server;
pub mod session;
pub mod shard;
pub mod topology;
