//! pgward: a PostgreSQL connection pooler and tenancy proxy.
//!
//! Layout (the data path is described in docs/architecture.md):
//! - [`protocol`]: sans-IO wire protocol framing and the messages the proxy inspects
//! - [`net`]: the stream type (TCP/TLS), TLS setup, startup-phase reading
//! - [`auth`]: SCRAM-SHA-256 and md5 state machines
//! - [`client`]: one task per client: startup, authentication, the session loop, cancel
//! - [`server`]: one pooled PostgreSQL connection and what it still owes
//! - [`pool`]: pools, fair checkout between tenants, maintenance
//! - [`tenancy`], [`sql`]: tenant resolution, context injection, statement classification
//! - [`admin`], [`http`], [`metrics`], [`status`]: observability
//! - [`import`]: `pgward import-pgbouncer` (pgbouncer.ini → pgward.toml)
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod http;
pub mod import;
pub mod metrics;
pub mod net;
pub mod pgctl;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod querystats;
pub mod run;
pub mod server;
pub mod shard;
pub mod sql;
pub mod status;
pub mod tenancy;
pub mod upgrade;

/// Reported as `server_version` by the admin console and `SHOW VERSION`.
pub const VERSION_STRING: &str = concat!("pgward ", env!("CARGO_PKG_VERSION"));
