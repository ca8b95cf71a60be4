//! `SHOW CLIENTS` and `SHOW SERVERS`: one row per connection, PgBouncer's socket columns.
//!
//! `ptr` is an opaque identifier of the connection (its record's address, as in PgBouncer);
//! `link` is the `ptr` of the connection it is paired with right now (a client holding a
//! server connection, and that server connection), empty otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::{s, Table};
use crate::pool::servers::{since_anchor_us, wall_time, ServerInfo};
use crate::proxy::Shared;

const TYPES: &str = "ssssssisissiiississiis";
const COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
    "tenant",
];

/// A time as PgBouncer prints it: `2026-12-04 13:05:01 UTC`.
fn time(t: SystemTime) -> Option<String> {
    let r = humantime::format_rfc3339_seconds(t).to_string();
    Some(r.replace('T', " ").replace('Z', " UTC"))
}

fn ptr<T>(p: *const T) -> String {
    format!("{:#x}", p as usize)
}

fn local(addr: Option<SocketAddr>) -> [Option<String>; 2] {
    match addr {
        Some(a) => [s(a.ip()), s(a.port())],
        None => [None, None],
    }
}

/// Server connections held by clients now: client id → the server's record.
fn links(shared: &Shared) -> HashMap<u64, Arc<ServerInfo>> {
    let mut m = HashMap::new();
    for p in shared.pools.iter() {
        let idle: Vec<u64> = p.idle_snapshot().iter().map(|i| i.0).collect();
        for i in p.servers.live() {
            let link = i.link.load(Ordering::Relaxed);
            if link != 0 && !idle.contains(&i.id) {
                m.insert(link, i);
            }
        }
    }
    m
}

pub fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(TYPES, COLUMNS);
    let links = links(shared);
    let now = crate::pool::now_us();
    for c in shared.clients.iter() {
        let (addr, port) = c.addr.rsplit_once(':').unwrap_or((&c.addr, ""));
        let state = c.state.load(Ordering::Relaxed);
        let waited = match c.wait_since_us.load(Ordering::Relaxed) {
            0 => 0,
            since => now.saturating_sub(since),
        };
        let request = wall_time(c.request_us.load(Ordering::Relaxed)).unwrap_or(c.connected_at);
        let [laddr, lport] = local(c.local);
        let link = match state {
            1 => links.get(&c.id).map(|i| ptr(Arc::as_ptr(i))),
            _ => None,
        };
        t.row(vec![
            s("C"),
            s(&c.user),
            s(&c.database),
            s("none"),
            s(match state {
                1 => "active",
                2 => "waiting",
                _ => "idle",
            }),
            s(addr.trim_start_matches('[').trim_end_matches(']')),
            s(port),
            laddr,
            lport,
            time(c.connected_at),
            time(request),
            s(waited / 1_000_000),
            s(waited % 1_000_000),
            s(0),
            s(ptr(Arc::as_ptr(c.value()))),
            s(link.unwrap_or_default()),
            s(0),
            s(if c.tls { "TLS" } else { "" }),
            s(&c.application_name),
            s(c.prepared.load(Ordering::Relaxed)),
            s(c.id),
            c.tenant.clone(),
        ]);
    }
    t
}

pub fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(TYPES, COLUMNS);
    let clients: HashMap<u64, String> = shared
        .clients
        .iter()
        .map(|c| (c.id, ptr(Arc::as_ptr(c.value()))))
        .collect();
    for p in shared.pools.iter() {
        let idle = p.idle_snapshot();
        for i in p.servers.live() {
            let idle_entry = idle.iter().find(|e| e.0 == i.id);
            let (state, request, prepared, link) = match idle_entry {
                Some((_, used, n)) => {
                    let at = wall_time(since_anchor_us(*used)).unwrap_or(i.connected);
                    ("idle", at, *n as u32, None)
                }
                None => {
                    let at =
                        wall_time(i.checked_out_us.load(Ordering::Relaxed)).unwrap_or(i.connected);
                    let link = clients.get(&i.link.load(Ordering::Relaxed)).cloned();
                    ("active", at, i.prepared.load(Ordering::Relaxed), link)
                }
            };
            let [laddr, lport] = local(i.local);
            let close_needed = p.marked_for_close(&i)
                || i.connected.elapsed().unwrap_or_default() > p.db.pool.server_lifetime;
            t.row(vec![
                s("S"),
                s(&p.db.upstream.user),
                s(p.name()),
                s("none"),
                s(state),
                s(&i.peer.name),
                s(i.peer.port),
                laddr,
                lport,
                time(i.connected),
                time(request),
                s(0),
                s(0),
                s(close_needed as i32),
                s(ptr(Arc::as_ptr(&i))),
                s(link.unwrap_or_default()),
                s(i.pid),
                s(if i.tls { "TLS" } else { "" }),
                s(""),
                s(prepared),
                s(i.id),
                p.dedicated_tenant.as_deref().map(str::to_string),
            ]);
        }
    }
    t
}
