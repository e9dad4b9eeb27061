//! A drop-in server for Blender Multi-User's `replication` 0.9.10 protocol.

pub mod admin;
pub mod config;
pub mod control;
pub mod delta;
pub mod health;
pub mod heartbeat;
pub mod metrics;
pub mod net;
pub mod pickle;
pub mod recovery;
pub mod saver;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod wire;
