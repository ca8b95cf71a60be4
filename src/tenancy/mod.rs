//! Tenancy: which tenant a client selected ([`resolve`]), the per-transaction context that is
//! injected for it ([`context`]), and the statement guard (T3) and session-state tracking (T2)
//! built on the SQL classifier.

pub mod context;
pub mod resolve;
pub mod source;

pub use context::{TenantContexts, TenantCtx};
pub use resolve::{resolve, Resolved};
