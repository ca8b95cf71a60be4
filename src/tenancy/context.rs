//! A tenant's context as bytes ready to send: computed once per tenant per configuration.
//!
//! Per transaction (T1) the proxy sends, pipelined before the client's message that needs it
//! and without a Sync:
//!   [Parse pgward_ctx_N]  Bind(pgward_ctx_N, name1, value1, …)  Execute
//! where `pgward_ctx_N` is `SELECT pg_catalog.set_config($1, $2, true), …` for N pairs. The
//! values travel as Bind parameters, so no quoting can break out. `set_config(…, true)` is
//! SET LOCAL: it ends with the transaction the client's statements run in (a simple Query
//! continues the implicit transaction the Execute started; an extended block ends at Sync).
//! The responses (ParseComplete, BindComplete, DataRow, CommandComplete) are swallowed. When
//! the server is idle the unnamed portal carries it (no client portal can exist); inside a
//! transaction a named portal is used and closed, so a client's suspended unnamed portal
//! survives. When to send it is decided by `server::txn`.
//!
//! Statements that may commit inside themselves (CALL, DO) and Queries that end their
//! transaction part-way get the same values at session level (`set_config(…, false)`,
//! statement `pgward_ctxs_N`), inline the same way, so they survive that commit. Statements
//! that cannot run in a transaction block (T4) get them at session level by a separate Query
//! first. Both are reset when the server connection is released.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::config::{Config, Tenant};
use crate::protocol::frontend::{put_bind_text, put_execute, put_parse, put_query, put_target};
use crate::server::params::{quote_ident, set_config_select};

pub struct TenantCtx {
    pub tenant: Arc<Tenant>,
    /// Number of (name, value) pairs; 0 means nothing to inject.
    pub pairs: usize,
    /// The context in the current transaction (`set_config(…, true)`).
    pub local: CtxFrames,
    /// The context at session level, inline (`set_config(…, false)`).
    pub session: CtxFrames,
    /// Query frame applying the context at session level (T4).
    pub session_query: Bytes,
    /// SQL undoing `session_query`.
    pub reset_sql: String,
    /// Prepared statements are shared only among clients with the same search_path.
    pub plan_context: String,
    /// Setting names (lower case) this tenant's clients may not change (T3).
    protected: Arc<BTreeSet<String>>,
}

impl TenantCtx {
    pub fn is_protected(&self, name: &str) -> bool {
        matches!(name, "search_path" | "role" | "session_authorization")
            || self.protected.contains(name)
    }
}

/// The frames that set a context by the extended protocol.
pub struct CtxFrames {
    /// Bit for `ServerConn::ctx` (`CtxStatements`).
    pub bit: u64,
    /// Parse frame of the statement.
    pub parse: Bytes,
    /// Close of the statement, then its Parse: prepares it whatever an earlier, unanswered
    /// Parse of it turns out to have done.
    pub reparse: Bytes,
    /// Bind + Execute on the unnamed portal.
    pub unnamed: Bytes,
    /// Bind + Execute + Close on the portal `pgward_ctx`.
    pub named: Bytes,
}

/// The portal of a context sent inside a transaction.
const CTX_PORTAL: &[u8] = b"pgward_ctx";

fn ctx_frames(stmt_name: &str, sql: &str, params: &[&[u8]], bit: u64) -> CtxFrames {
    let mut def = sql.as_bytes().to_vec();
    def.push(0);
    def.extend_from_slice(&0i16.to_be_bytes());
    let mut parse = BytesMut::new();
    put_parse(&mut parse, stmt_name.as_bytes(), &def);
    let mut reparse = BytesMut::new();
    put_target(&mut reparse, b'C', b'S', stmt_name.as_bytes());
    reparse.extend_from_slice(&parse);
    let mut unnamed = BytesMut::new();
    put_bind_text(&mut unnamed, b"", stmt_name.as_bytes(), params);
    put_execute(&mut unnamed, b"");
    let mut named = BytesMut::new();
    put_bind_text(&mut named, CTX_PORTAL, stmt_name.as_bytes(), params);
    put_execute(&mut named, CTX_PORTAL);
    put_target(&mut named, b'C', b'P', CTX_PORTAL);
    CtxFrames {
        bit,
        parse: parse.freeze(),
        reparse: reparse.freeze(),
        unnamed: unnamed.freeze(),
        named: named.freeze(),
    }
}

/// The contexts of every configured tenant.
#[derive(Default)]
pub struct TenantContexts {
    by_id: HashMap<String, Arc<TenantCtx>>,
    plain: HashMap<String, Arc<TenantCtx>>,
}

impl TenantContexts {
    /// The configured tenants plus `loaded` ones (from `tenant_query`; the file wins when an
    /// id is in both).
    pub fn build(cfg: &Config, loaded: &[Arc<Tenant>]) -> TenantContexts {
        let all: HashMap<&str, &Arc<Tenant>> = loaded
            .iter()
            .map(|t| (t.id.as_str(), t))
            .chain(cfg.tenants.values().map(|t| (t.id.as_str(), t)))
            .collect();
        // Any tenant's setting is protected for every tenant: a client must not be able to
        // set another tenant's key either.
        let protected: Arc<BTreeSet<String>> = Arc::new(
            all.values()
                .flat_map(|t| t.settings.keys().cloned())
                .collect(),
        );
        let baseline = |db: &str| {
            cfg.database(db)
                .is_some_and(|d| d.upstream.baseline_role.is_some())
        };
        let by_id = all
            .into_iter()
            .map(|(id, t)| {
                let ctx = build_one(t.clone(), protected.clone(), baseline(&t.database));
                (id.to_string(), Arc::new(ctx))
            })
            .collect();
        // Plain clients of a database with a baseline role run as the login role in each
        // transaction: that is their context.
        let plain = cfg
            .databases
            .iter()
            .filter(|d| d.upstream.baseline_role.is_some())
            .map(|d| {
                let t = Arc::new(Tenant {
                    id: String::new(),
                    database: d.name.clone(),
                    search_path: Vec::new(),
                    settings: Default::default(),
                    role: None,
                    users: None,
                    limits: Default::default(),
                    dedicated: None,
                });
                (
                    d.name.clone(),
                    Arc::new(build_one(t, protected.clone(), true)),
                )
            })
            .collect();
        TenantContexts { by_id, plain }
    }
    pub fn get(&self, id: &str) -> Option<&Arc<TenantCtx>> {
        self.by_id.get(id)
    }
    /// The context of plain (tenant-less) clients of `database`, if it has one.
    pub fn plain(&self, database: &str) -> Option<&Arc<TenantCtx>> {
        self.plain.get(database)
    }
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.by_id.get(id).map(|c| c.tenant.clone())
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
    /// Tenants sorted by id.
    pub fn sorted(&self) -> Vec<Arc<Tenant>> {
        let mut v: Vec<_> = self.by_id.values().map(|c| c.tenant.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The search_path value for a list of schemas: simple lower-case names as they are, others
/// quoted as identifiers.
pub fn search_path_value(schemas: &[String]) -> String {
    schemas
        .iter()
        .map(|s| {
            let simple = !s.is_empty()
                && s.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_lowercase()
                        || b == b'_'
                        || (i > 0 && (b.is_ascii_digit() || b == b'$'))
                });
            if simple {
                s.clone()
            } else {
                quote_ident(s)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `baseline`: the tenant's database has a baseline role, so a tenant without a role of its
/// own runs as the login role (`role = none`) per transaction, not as the baseline.
pub fn build_one(t: Arc<Tenant>, protected: Arc<BTreeSet<String>>, baseline: bool) -> TenantCtx {
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !t.search_path.is_empty() {
        pairs.push(("search_path".into(), search_path_value(&t.search_path)));
    }
    for (k, v) in &t.settings {
        pairs.push((k.clone(), v.clone()));
    }
    match &t.role {
        Some(r) => pairs.push(("role".into(), r.clone())),
        None if baseline => pairs.push(("role".into(), "none".into())),
        None => {}
    }
    let n = pairs.len();
    let select = |local: bool| {
        let mut sql = String::from("SELECT ");
        for i in 0..n {
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(
                sql,
                "pg_catalog.set_config(${}, ${}, {local})",
                2 * i + 1,
                2 * i + 2
            );
        }
        sql
    };
    let params: Vec<&[u8]> = pairs
        .iter()
        .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
        .collect();
    // One statement per pair count, shared by every tenant with that many pairs.
    let bits = n.min(31) as u32;
    let local = ctx_frames(
        &format!("pgward_ctx_{n}"),
        &select(true),
        &params,
        1u64 << bits,
    );
    let session = ctx_frames(
        &format!("pgward_ctxs_{n}"),
        &select(false),
        &params,
        1u64 << (32 + bits),
    );

    let session_sql = set_config_select(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), false);
    let reset_sql: String = pairs
        .iter()
        .map(|(k, _)| format!("RESET {};", quote_ident(k)))
        .collect();
    let mut session_query = BytesMut::new();
    put_query(&mut session_query, session_sql.as_bytes());

    TenantCtx {
        plan_context: search_path_value(&t.search_path),
        tenant: t,
        pairs: n,
        local,
        session,
        session_query: session_query.freeze(),
        reset_sql,
        protected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn search_path_quoting() {
        assert_eq!(
            search_path_value(&[
                "acme".into(),
                "public".into(),
                "Big Co".into(),
                "$user".into()
            ]),
            "acme, public, \"Big Co\", \"$user\""
        );
    }

    #[test]
    fn context_frames() {
        let mut settings = BTreeMap::new();
        settings.insert("app.tenant_id".to_string(), "it's".to_string());
        let t = Arc::new(Tenant {
            id: "acme".into(),
            database: "app".into(),
            search_path: vec!["acme".into()],
            settings,
            role: Some("r".into()),
            users: None,
            limits: Default::default(),
            dedicated: None,
        });
        let c = build_one(
            t,
            Arc::new(BTreeSet::from(["app.tenant_id".to_string()])),
            false,
        );
        assert_eq!(c.pairs, 3);
        assert_eq!(c.local.parse[0], b'P');
        assert!(String::from_utf8_lossy(&c.local.parse).contains("set_config($5, $6, true)"));
        assert!(String::from_utf8_lossy(&c.session.parse).contains("set_config($5, $6, false)"));
        assert_eq!(c.local.unnamed[0], b'B');
        assert!(c.local.unnamed.ends_with(b"E\0\0\0\x09\0\0\0\0\0"));
        assert!(c.local.named.ends_with(b"C\0\0\0\x10Ppgward_ctx\0"));
        assert_ne!(c.local.bit, c.session.bit);
        assert!(String::from_utf8_lossy(&c.session_query).contains("E'it''s'"));
        assert_eq!(
            c.reset_sql,
            "RESET \"search_path\";RESET \"app.tenant_id\";RESET \"role\";"
        );
        assert!(c.is_protected("app.tenant_id"));
        assert!(c.is_protected("search_path"));
        assert!(!c.is_protected("statement_timeout"));
    }
}
