//! SHOW tables about pools, databases, users, tenants and the process (PgBouncer's layout,
//! then pgward's columns; see the module doc of `admin`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{s, settings, sockets, stats, Table};
use crate::config::PoolMode;
use crate::pool::Pool;
use crate::proxy::Shared;

fn mode(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

pub fn table(shared: &Shared, what: &str) -> Option<Table> {
    Some(match what {
        "POOLS" => pools(shared),
        "CLIENTS" => sockets::clients(shared),
        "SERVERS" => sockets::servers(shared),
        "STATS" => stats::stats(shared),
        "STATS_TOTALS" => stats::totals(shared),
        "STATS_AVERAGES" => stats::averages(shared),
        "TOTALS" => stats::grand_totals(shared),
        "TENANTS" => tenants(shared),
        "CONFIG" => settings::show(shared),
        "DATABASES" => databases(shared),
        "USERS" => users(shared),
        "LISTS" => lists(shared),
        "MEM" => mem(shared),
        "STATE" => state(shared),
        "QUERIES" => {
            let mut t = Table::new(
                "ssqNNNN",
                &[
                    "tenant", "query", "calls", "total_ms", "mean_ms", "p50_ms", "p99_ms",
                ],
            );
            for r in crate::querystats::global().top(20) {
                t.row(r.into_iter().map(Some).collect());
            }
            t
        }
        "VERSION" => {
            let mut t = Table::new("s", &["version"]);
            t.row(vec![s(crate::VERSION_STRING)]);
            t
        }
        _ => return None,
    })
}

/// Clients of a database by state (idle, active, waiting), and the longest current wait (µs).
/// Clients of pool `p` by state, and the longest current wait (µs): a dedicated tenant's pool
/// counts that tenant's clients, a database's pool the rest of its clients.
fn clients_by_state(shared: &Shared, p: &Pool, all: &[Arc<Pool>]) -> ([usize; 3], u64) {
    let (mut n, mut maxwait) = ([0; 3], 0);
    let now = crate::pool::now_us();
    let dedicated: Vec<Arc<str>> = match &p.dedicated_tenant {
        Some(t) => vec![t.clone()],
        None => all
            .iter()
            .filter(|o| o.name() == p.name())
            .filter_map(|o| o.dedicated_tenant.clone())
            .collect(),
    };
    for c in shared.clients.iter() {
        let on_dedicated = c
            .tenant
            .as_deref()
            .is_some_and(|t| dedicated.iter().any(|d| &**d == t));
        if c.database == p.name() && on_dedicated == p.dedicated_tenant.is_some() {
            n[(c.state.load(Ordering::Relaxed) as usize).min(2)] += 1;
            match c.wait_since_us.load(Ordering::Relaxed) {
                0 => {}
                since => maxwait = maxwait.max(now.saturating_sub(since)),
            }
        }
    }
    (n, maxwait)
}

/// One pool's figures as `SHOW POOLS` gives them; the status page (`crate::status`) shows
/// the same values, so the two cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFigures {
    pub database: String,
    /// The login role of its server connections.
    pub user: String,
    /// A dedicated tenant's pool: the tenant.
    pub tenant: Option<String>,
    /// `disable`/`random` when its upstream has several hosts.
    pub load_balance_hosts: Option<String>,
    /// PgBouncer's meaning: logged-in clients that are not waiting (active or idle).
    pub cl_active: usize,
    pub cl_waiting: usize,
    pub sv_active: usize,
    pub sv_idle: usize,
    pub sv_login: usize,
    /// The longest current wait for a server connection, µs.
    pub maxwait_us: u64,
    pub mode: &'static str,
    pub paused: bool,
    /// Configured server connections of the pool (`pool.size`).
    pub size: usize,
    /// `SHOW STATS`' `avg_wait_time` of this pool: the mean wait per server assignment over
    /// the last `stats_period`, µs (not a `SHOW POOLS` column).
    pub avg_wait_us: u64,
}

/// Every pool's figures, in the registry's order.
pub fn pool_figures(shared: &Shared) -> Vec<PoolFigures> {
    let all: Vec<Arc<Pool>> = shared.pools.iter().map(|p| p.clone()).collect();
    all.iter()
        .map(|p| {
            let st = &p.stats;
            let ([idle, active, waiting], maxwait) = clients_by_state(shared, p, &all);
            PoolFigures {
                database: p.name().to_string(),
                user: p.db.upstream.user.clone(),
                tenant: p.dedicated_tenant.as_deref().map(str::to_string),
                load_balance_hosts: load_balance(&p.db.upstream),
                cl_active: active + idle,
                cl_waiting: waiting,
                sv_active: st.active.load(Ordering::Relaxed),
                sv_idle: st.idle.load(Ordering::Relaxed),
                sv_login: st.connecting.load(Ordering::Relaxed),
                maxwait_us: maxwait,
                mode: mode(p.mode()),
                paused: p.is_paused(),
                size: p.db.pool.size,
                avg_wait_us: {
                    let (delta, secs) = p.averages.lock().unwrap_or_else(|e| e.into_inner()).last;
                    delta.averages(secs).wait_time()
                },
            }
        })
        .collect()
}

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(
        "ssiiiiiiiiiiiiisss",
        &[
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "load_balance_hosts",
            "tenant",
        ],
    );
    for p in pool_figures(shared) {
        t.row(vec![
            s(&p.database),
            s(&p.user),
            s(p.cl_active),
            s(p.cl_waiting),
            s(0),
            s(0),
            s(p.sv_active),
            s(0),
            s(0),
            s(p.sv_idle),
            s(0),
            s(0),
            s(p.sv_login),
            s(p.maxwait_us / 1_000_000),
            s(p.maxwait_us % 1_000_000),
            s(p.mode),
            p.load_balance_hosts,
            p.tenant,
        ]);
    }
    t
}

/// A tenant's load as `SHOW TENANTS` gives it: clients connected, clients waiting for a
/// server connection, server connections held (in its database's pool and in its own
/// database's, if it has one open).
pub fn tenant_load(shared: &Shared, ten: &crate::config::Tenant) -> (usize, usize, usize) {
    let id = &ten.id;
    let clients = shared.tenant_clients.get(id);
    let pools = [
        shared.pool(&ten.database),
        crate::tenancy::dedicated::open_pool(shared, &ten.database, id),
    ];
    let (waiting, held) = pools
        .iter()
        .flatten()
        .filter_map(|p| p.shares().into_iter().find(|(c, _, _)| &**c == id))
        .fold((0, 0), |(w, h), (_, w2, h2)| (w + w2, h + h2));
    (clients, waiting, held)
}

fn tenants(shared: &Shared) -> Table {
    let mut t = Table::new(
        "ssssssiiiissssss",
        &[
            "tenant",
            "database",
            "search_path",
            "role",
            "settings",
            "users",
            "clients",
            "waiting",
            "server_connections",
            "weight",
            "max_server_connections",
            "max_client_connections",
            "queue_timeout",
            "reserved_server_connections",
            "upstream",
            "role_check",
        ],
    );
    let cfg = shared.config();
    for ten in shared.tenants.load().sorted() {
        let id = &ten.id;
        let (clients, waiting, held) = tenant_load(shared, &ten);
        let defaults = cfg
            .database(&ten.database)
            .map(|d| {
                let size = ten.dedicated.as_ref().and_then(|x| x.pool_size);
                (size.unwrap_or(d.pool.size), d.tenant_defaults)
            })
            .unwrap_or_default();
        let max_server = ten
            .limits
            .share(defaults.0, defaults.1.max_server_connections)
            .max;
        let max_clients = ten
            .limits
            .max_client_connections
            .or(defaults.1.max_client_connections);
        t.row(vec![
            s(id),
            s(&ten.database),
            s(ten.search_path.join(", ")),
            ten.role.clone(),
            s(ten
                .settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")),
            ten.users.as_ref().map(|u| u.join(", ")),
            s(clients),
            s(waiting),
            s(held),
            s(ten.limits.weight),
            (max_server != usize::MAX).then(|| max_server.to_string()),
            max_clients.map(|n| n.to_string()),
            ten.limits
                .queue_timeout
                .map(|d| humantime::format_duration(d).to_string()),
            s(ten.limits.reserved_server_connections),
            ten.dedicated.as_ref().map(|d| {
                let u = &d.upstream;
                format!("{}@{}:{}/{}", u.user, u.host, u.port, u.dbname)
            }),
            // The T5 check of its own upstream (a shared tenant's is its database's).
            ten.dedicated.as_ref().and_then(|_| {
                let db = cfg.database(&ten.database)?;
                let key = crate::tenancy::posture::key(db, Some(&ten));
                Some(
                    shared
                        .postures
                        .get(&key)
                        .map_or("not checked yet".into(), |p| p.summary()),
                )
            }),
        ]);
    }
    t
}

fn databases(shared: &Shared) -> Table {
    let cfg = shared.config();
    let mut t = Table::new(
        "ssissiiiissiiiiiisss",
        &[
            "name",
            "host",
            "port",
            "database",
            "force_user",
            "pool_size",
            "min_pool_size",
            "reserve_pool_size",
            "server_lifetime",
            "pool_mode",
            "load_balance_hosts",
            "max_connections",
            "current_connections",
            "max_client_connections",
            "current_client_connections",
            "paused",
            "disabled",
            "role_check",
            "target_session_attrs",
            "current_host",
        ],
    );
    let disabled = shared
        .disabled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for d in &cfg.databases {
        let pools: Vec<Arc<Pool>> = shared
            .pools
            .iter()
            .filter(|p| p.name() == d.name)
            .map(|p| p.clone())
            .collect();
        let clients = shared
            .clients
            .iter()
            .filter(|c| c.database == d.name)
            .count();
        let posture = shared.postures.get(&d.name).map(|p| p.summary());
        t.row(vec![
            s(&d.name),
            // Several hosts: their names, as PgBouncer lists them (ports in `current_host`).
            s(d.upstream
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(",")),
            s(d.upstream.port),
            s(&d.upstream.dbname),
            s(&d.upstream.user),
            s(d.pool.size),
            s(d.pool.min_size),
            // pgward has no connections beyond pool_size (tenants' reserves are within it).
            s(0),
            s(d.pool.server_lifetime.as_secs()),
            s(mode(d.pool.mode)),
            load_balance(&d.upstream),
            // Most server connections of the database's own pool (PgBouncer: 0 = no limit).
            s(d.pool.size),
            s(pools.iter().map(|p| p.size_now()).sum::<usize>()),
            s(0),
            s(clients),
            s(shared.pool(&d.name).is_some_and(|p| p.is_paused()) as i32),
            s(disabled.contains(&d.name) as i32),
            posture,
            s(d.upstream.target_session_attrs.as_str()),
            shared
                .pool(&d.name)
                .and_then(|p| p.current_host())
                .map(|h| h.to_string()),
        ]);
    }
    t
}

/// PgBouncer's `load_balance_hosts` column: set only when the upstream has several hosts.
fn load_balance(up: &crate::config::Upstream) -> Option<String> {
    (up.hosts.len() > 1).then(|| (if up.load_balance { "random" } else { "disable" }).to_string())
}

fn users(shared: &Shared) -> Table {
    let cfg = shared.config();
    let mut t = Table::new(
        "ssssiiii",
        &[
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
    );
    let mut names: Vec<&String> = cfg.users.keys().collect();
    names.sort();
    for name in names {
        // Server connections that log in as this user (pgward pools per database).
        let servers: usize = shared
            .pools
            .iter()
            .filter(|p| &p.db.upstream.user == name)
            .map(|p| p.size_now())
            .sum();
        let clients = shared.clients.iter().filter(|c| &c.user == name).count();
        t.row(vec![
            s(name),
            s(""),
            s(""),
            None,
            s(0),
            s(servers),
            s(0),
            s(clients),
        ]);
    }
    t
}

fn lists(shared: &Shared) -> Table {
    let cfg = shared.config();
    let mut t = Table::new("si", &["list", "items"]);
    let servers: usize = shared.pools.iter().map(|p| p.size_now()).sum();
    for (name, n) in [
        ("databases", cfg.databases.len()),
        ("users", cfg.users.len()),
        ("peers", 0),
        ("pools", shared.pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", shared.clients.len()),
        (
            "login_clients",
            shared.pending_logins.load(Ordering::Relaxed),
        ),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![s(name), s(n)]);
    }
    t
}

/// pgward allocates per object, not from slabs: one row per kind of long-lived object, with
/// its size, how many exist and their total.
fn mem(shared: &Shared) -> Table {
    let mut t = Table::new("siiii", &["name", "size", "used", "free", "memtotal"]);
    let servers: usize = shared.pools.iter().map(|p| p.size_now()).sum();
    for (name, size, used) in [
        (
            "client_info",
            std::mem::size_of::<crate::proxy::ClientInfo>(),
            shared.clients.len(),
        ),
        (
            "server_conn",
            std::mem::size_of::<crate::server::ServerConn>(),
            servers,
        ),
        ("pool", std::mem::size_of::<Pool>(), shared.pools.len()),
    ] {
        t.row(vec![s(name), s(size), s(used), s(0), s(size * used)]);
    }
    t
}

/// PgBouncer's process state: paused when every pool is (`PAUSE` without a database).
fn state(shared: &Shared) -> Table {
    let mut t = Table::new("ss", &["key", "value"]);
    let paused = !shared.pools.is_empty() && shared.pools.iter().all(|p| p.is_paused());
    let yes = |b: bool| s(if b { "yes" } else { "no" });
    t.row(vec![s("active"), yes(!paused)]);
    t.row(vec![s("paused"), yes(paused)]);
    t.row(vec![s("suspended"), yes(false)]);
    t
}
