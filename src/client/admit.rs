//! From an authenticated client to a running [`Session`]: the checks and choices that follow
//! authentication (tenant users, database, DISABLE, tenant posture and limits, protected
//! startup parameters, pool, parameters) and the construction of the session. Two ways in
//! share them: a client that just logged in ([`super::handshake`]) and a client moved here
//! from the process this one took over from ([`super::handover::resume`]).
//!
//! Invariants:
//! - A session is built in one place ([`build`]); both ways in get the same fields.
//! - A moved client was admitted by the old process already: it is not counted against
//!   client limits again nor refused for DISABLE, and its startup values are not re-checked
//!   on the server (`Entry::Moved`); everything it needs to pick the same pool and tenant
//!   context is re-derived here from its startup parameters.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;

use super::cancel::CancelSlot;
use super::session::Session;
use super::{auth_query, startup_check, Counted};
use crate::config::{Config, Database, PoolMode, User};
use crate::net::Stream;
use crate::pool::{ClassKey, Pool};
use crate::protocol::backend::PgError;
use crate::proxy::{ClientInfo, Shared};
use crate::server::params::{ClientParams, ParamSet};
use crate::server::pending::Pending;
use crate::server::txn::TxnModel;
use crate::tenancy::resolve::Resolved;
use crate::tenancy::TenantCtx;

/// How the client arrives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// It just authenticated.
    Login,
    /// It moved here from the process this one took over from.
    Moved,
}

/// What admission decided.
pub(super) struct Admitted {
    pub db: Arc<Database>,
    pub tenant: Option<Arc<TenantCtx>>,
    pub class: ClassKey,
    pub tenant_slot: Option<crate::tenancy::limits::TenantSlot>,
    pub pool: Arc<Pool>,
    pub home: Arc<Pool>,
    pub baseline: Arc<ParamSet>,
    pub params: ClientParams,
}

/// Everything after authentication up to the session's parameters. `Err` is the FATAL to
/// refuse the client with.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    cfg: &Config,
    resolved: &Resolved,
    user: &User,
    client_key: Option<[u8; 32]>,
    entry: Entry,
) -> Result<Admitted, PgError> {
    // A user that is not configured was found by `auth_query`: it gets a pool of its own.
    let dynamic = !cfg.users.contains_key(&resolved.user);
    if let Some(t) = &resolved.tenant {
        if t.users
            .as_ref()
            .is_some_and(|list| !list.contains(&user.name))
        {
            return Err(PgError::fatal(
                "28000",
                format!(
                    "pgward: user \"{}\" may not select tenant \"{}\"",
                    user.name, t.id
                ),
            ));
        }
    }
    let Some(db) = cfg.database(&resolved.database).cloned() else {
        return Err(PgError::fatal(
            "3D000",
            format!("database \"{}\" does not exist", resolved.database),
        ));
    };
    if entry == Entry::Login
        && shared
            .disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&db.name)
    {
        let e = format!(
            "database \"{}\" is not currently accepting connections (pgward: DISABLE)",
            db.name
        );
        return Err(PgError::fatal("55000", e));
    }
    if db.tenant_required && resolved.tenant.is_none() {
        return Err(PgError::fatal("28000", format!("pgward: database \"{}\" requires a tenant (dbname = tenant id, user.tenant, or options=-cpgward.tenant=…)", db.name)));
    }
    let tenant = resolved
        .tenant
        .as_ref()
        .and_then(|t| shared.tenants.load().get(&t.id).cloned());
    // The client's class in the pool's fair queue: its tenant, or the plain clients.
    let class = ClassKey::from(resolved.tenant.as_ref().map_or("", |t| t.id.as_str()));
    if let Some(t) = &tenant {
        if let Some(e) = crate::tenancy::posture::refusal(shared, &db, &t.tenant) {
            return Err(e);
        }
    }
    let tenant_slot = match &tenant {
        Some(t) => {
            let max = match entry {
                Entry::Login => (t.tenant.limits.max_client_connections)
                    .or(db.tenant_defaults.max_client_connections),
                Entry::Moved => None,
            };
            match shared.tenant_clients.take(&class, max) {
                Ok(slot) => Some(slot),
                Err(max) => {
                    crate::metrics::tenant_refusal(&t.tenant.id, "max_client_connections");
                    let msg = format!("pgward: too many client connections for tenant \"{}\" (max_client_connections = {max})", t.tenant.id);
                    return Err(PgError::fatal("53300", msg));
                }
            }
        }
        None => None,
    };
    if let Some(t) = &tenant {
        // T3 at login: a startup parameter (or `options=-c …`) may not set what the tenant
        // context sets, as `SET` may not.
        let protected = resolved
            .params
            .iter()
            .find(|(name, _)| t.is_protected(&name.to_ascii_lowercase()));
        if let Some((name, _)) = protected {
            crate::metrics::rejected("tenant_guard");
            return Err(PgError::fatal("42501", format!("pgward: startup parameter \"{name}\" is not allowed for tenant \"{}\": the tenant context is managed by the proxy", t.tenant.id)));
        }
    }
    let home = if dynamic {
        auth_query::user_pool(shared, &db, user, client_key)
    } else {
        shared.pool(&db.name)
    };
    // A tenant with a database of its own starts there.
    let pool = match tenant.as_ref().filter(|t| t.tenant.dedicated.is_some()) {
        Some(t) => crate::tenancy::dedicated::pool_for(shared, &t.tenant),
        None => home.clone(),
    };
    let (Some(pool), Some(home)) = (pool, home) else {
        return Err(PgError::fatal(
            "3D000",
            format!("database \"{}\" does not exist", db.name),
        ));
    };
    let baseline = pool
        .baseline()
        .await
        .map_err(|e| PgError::fatal("08006", format!("pgward: {e}")))?;
    let mut params = ClientParams::new(&baseline, &resolved.params);
    if entry == Entry::Login {
        startup_check::check(&pool, &class, &mut params).await?;
    }
    Ok(Admitted {
        db,
        tenant,
        class,
        tenant_slot,
        pool,
        home,
        baseline,
        params,
    })
}

/// Who the session is for, beyond what admission decided.
pub(super) struct Seed {
    pub stream: Stream,
    /// Bytes the client already sent (pipelined after its startup packet).
    pub cin: BytesMut,
    pub user: String,
    pub tenant_id: Option<String>,
    pub addr: String,
    pub connected_at: SystemTime,
    pub application_name: String,
    /// The startup parameters, packed (`handover::pack_startup`).
    pub startup: Box<[u8]>,
    pub key: (i32, i32),
    pub cancel: Arc<CancelSlot>,
    pub slot: Counted,
}

/// Register the client (SHOW CLIENTS) and build its session.
pub(super) fn build(shared: &Arc<Shared>, cfg: &Config, a: Admitted, seed: Seed) -> Box<Session> {
    let info = Arc::new(ClientInfo {
        id: shared.next_client.fetch_add(1, Ordering::Relaxed),
        user: seed.user,
        database: a.db.name.clone(),
        tenant: seed.tenant_id,
        addr: seed.addr,
        connected_at: seed.connected_at,
        state: AtomicU8::new(0),
        wait_since_us: Default::default(),
        tls: seed.stream.is_tls(),
        application_name: seed.application_name,
        local: seed.stream.local_addr(),
        request_us: Default::default(),
        prepared: Default::default(),
        kill: Default::default(),
        killed: Default::default(),
        startup: seed.startup,
    });
    shared.clients.insert(info.id, info.clone());
    tracing::debug!(addr = %info.addr, user = %info.user, database = %a.db.name, tenant = ?info.tenant, "client connected");
    let db = a.db;
    let mode = db.pool.mode;
    let observe =
        (cfg.metrics.query_stats || cfg.metrics.slow_statement_threshold.is_some()).then(|| {
            (
                cfg.metrics.query_stats,
                cfg.metrics.slow_statement_threshold,
                Arc::from(info.tenant.as_deref().unwrap_or("")),
            )
        });
    // Boxed: the session is the bulk of an idle client's memory, and a future that moves it
    // around would hold it more than once.
    Box::new(Session {
        labels: crate::metrics::labels(&db.name, info.tenant.as_deref()),
        shared: shared.clone(),
        info,
        pool: a.pool,
        home: a.home,
        mode,
        policy: db.pool.session_state,
        ctx: a
            .tenant
            .clone()
            .or_else(|| shared.tenants.load().plain(&db.name).cloned())
            .filter(|t| t.pairs > 0),
        tenant: a.tenant,
        class: a.class,
        params: a.params,
        max_message: cfg.max_message_size,
        cancel: seed.cancel,
        key: seed.key,
        client: seed.stream,
        cin: seed.cin,
        cout: BytesMut::new(),
        server: None,
        sout: BytesMut::new(),
        pending: Pending::default(),
        txn: TxnModel::default(),
        hold: false,
        terminating: false,
        dirty: Default::default(),
        pinned: mode == PoolMode::Session,
        statements: Default::default(),
        stmt_started: None,
        stmt_mark: None,
        server_broken: false,
        server_fatal: Default::default(),
        lost: None,
        timers: Default::default(),
        _slot: seed.slot,
        _tenant_slot: a.tenant_slot,
        acquire_error: None,
        observe,
        exec_text: None,
        unnamed_text: None,
        unnamed_effects: Default::default(),
        unnamed_cmd: crate::metrics::Command::Other,
        exec_cmd: crate::metrics::Command::Other,
        unnamed_here: false,
    })
}
