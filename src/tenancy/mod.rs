//! Tenancy: which tenant a client selected ([`resolve`]), the per-transaction context that is
//! injected for it ([`context`]), its limits ([`limits`]) and its own database if it has one
//! ([`dedicated`]), and the statement guard (T3) and session-state tracking (T2)
//! built on the SQL classifier, and the check of what a statement without its context would
//! run as ([`posture`], T5).

pub mod context;
pub mod dedicated;
pub mod limits;
pub mod posture;
pub mod resolve;
pub mod source;

pub use context::{TenantContexts, TenantCtx};
pub use resolve::{resolve, Resolved};
