//! SHOW commands of the admin console.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::Table;
use crate::config::PoolMode;
use crate::pool::Pool;
use crate::proxy::Shared;

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn unix(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}", d.as_secs())
}

pub fn table(shared: &Shared, what: &str) -> Option<Table> {
    Some(match what {
        "POOLS" => pools(shared),
        "CLIENTS" => clients(shared),
        "SERVERS" => servers(shared),
        "STATS" => stats(shared),
        "TENANTS" => tenants(shared),
        "CONFIG" => config(shared),
        "DATABASES" => databases(shared),
        "QUERIES" => {
            let mut t = Table::new(&[
                "tenant", "query", "calls", "total_ms", "mean_ms", "p50_ms", "p99_ms",
            ]);
            for r in crate::querystats::global().top(20) {
                t.row(r.into_iter().map(Some).collect());
            }
            t
        }
        "VERSION" => {
            let mut t = Table::new(&["version"]);
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

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(&[
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
        "tenant",
    ]);
    let all: Vec<Arc<Pool>> = shared.pools.iter().map(|p| p.clone()).collect();
    for p in &all {
        let st = &p.stats;
        let ([idle, active, waiting], maxwait) = clients_by_state(shared, p, &all);
        t.row(vec![
            s(p.name()),
            s(&p.db.upstream.user),
            s(active + idle),
            s(waiting),
            s(0),
            s(0),
            s(st.active.load(Ordering::Relaxed)),
            s(0),
            s(0),
            s(st.idle.load(Ordering::Relaxed)),
            s(0),
            s(0),
            s(st.connecting.load(Ordering::Relaxed)),
            s(maxwait / 1_000_000),
            s(maxwait % 1_000_000),
            s(match p.mode() {
                PoolMode::Transaction => "transaction",
                PoolMode::Session => "session",
            }),
            p.dedicated_tenant.as_deref().map(str::to_string),
        ]);
    }
    t
}

fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "tenant",
        "state",
        "addr",
        "port",
        "connect_time",
        "tls",
        "application_name",
        "id",
    ]);
    for c in shared.clients.iter() {
        let (addr, port) = c.addr.rsplit_once(':').unwrap_or((&c.addr, ""));
        t.row(vec![
            s("C"),
            s(&c.user),
            s(&c.database),
            c.tenant.clone(),
            s(match c.state.load(Ordering::Relaxed) {
                1 => "active",
                2 => "waiting",
                _ => "idle",
            }),
            s(addr),
            s(port),
            s(unix(c.connected_at)),
            s(if c.tls { "yes" } else { "no" }),
            s(&c.application_name),
            s(c.id),
        ]);
    }
    t
}

fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "remote_pid",
        "id",
        "age_seconds",
        "idle_seconds",
    ]);
    for p in shared.pools.iter() {
        for (id, pid, created, used) in p.idle_snapshot() {
            t.row(vec![
                s("S"),
                s(&p.db.upstream.user),
                s(p.name()),
                s("idle"),
                s(&p.db.upstream.host),
                s(p.db.upstream.port),
                s(pid),
                s(id),
                s(created.elapsed().as_secs()),
                s(used.elapsed().as_secs()),
            ]);
        }
        let active = p.stats.active.load(Ordering::Relaxed);
        for _ in 0..active {
            t.row(vec![
                s("S"),
                s(&p.db.upstream.user),
                s(p.name()),
                s("active"),
                s(&p.db.upstream.host),
                s(p.db.upstream.port),
                None,
                None,
                None,
                None,
            ]);
        }
    }
    t
}

fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "total_server_assignment_count",
    ]);
    for p in shared.pools.iter() {
        let st = &p.stats;
        t.row(vec![
            s(p.name()),
            s(st.xact_count.load(Ordering::Relaxed)),
            s(st.query_count.load(Ordering::Relaxed)),
            s(st.bytes_received.load(Ordering::Relaxed)),
            s(st.bytes_sent.load(Ordering::Relaxed)),
            s(st.xact_time_us.load(Ordering::Relaxed)),
            s(st.query_time_us.load(Ordering::Relaxed)),
            s(st.wait_us_total.load(Ordering::Relaxed)),
            s(st.checkouts_total.load(Ordering::Relaxed)),
        ]);
    }
    t
}

fn tenants(shared: &Shared) -> Table {
    let mut t = Table::new(&[
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
    ]);
    let cfg = shared.config();
    for ten in shared.tenants.load().sorted() {
        let id = &ten.id;
        let clients = shared.tenant_clients.get(id);
        // Its share of its database's pool and of its own database's, if it has one open.
        let pools = [
            shared.pool(&ten.database),
            crate::tenancy::dedicated::open_pool(shared, &ten.database, id),
        ];
        let (waiting, held) = pools
            .iter()
            .flatten()
            .filter_map(|p| p.shares().into_iter().find(|(c, _, _)| &**c == id))
            .fold((0, 0), |(w, h), (_, w2, h2)| (w + w2, h + h2));
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
    let mut t = Table::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "pool_mode",
        "paused",
        "current_connections",
        "role_check",
    ]);
    for d in &cfg.databases {
        let pool = shared.pool(&d.name);
        let posture = shared.postures.get(&d.name).map(|p| p.summary());
        t.row(vec![
            s(&d.name),
            s(&d.upstream.host),
            s(d.upstream.port),
            s(&d.upstream.dbname),
            s(&d.upstream.user),
            s(d.pool.size),
            s(d.pool.min_size),
            s(match d.pool.mode {
                PoolMode::Transaction => "transaction",
                PoolMode::Session => "session",
            }),
            s(pool.as_ref().is_some_and(|p| p.is_paused()) as i32),
            s(pool.map(|p| p.size_now()).unwrap_or(0)),
            posture,
        ]);
    }
    t
}

fn config(shared: &Shared) -> Table {
    let cfg = shared.config();
    let mut t = Table::new(&["key", "value", "changeable"]);
    let text = crate::config::render_effective(&cfg);
    let value: toml::Value =
        toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    let mut flat = Vec::new();
    flatten("", &value, &mut flat);
    for (k, v) in flat {
        let restart = matches!(
            k.as_str(),
            "listen" | "http_listen" | "workers" | "log_format"
        ) || k.starts_with("metrics.");
        t.row(vec![s(&k), s(v), s(if restart { "no" } else { "yes" })]);
    }
    t
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) && !a.is_empty() => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
