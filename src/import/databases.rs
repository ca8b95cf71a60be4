//! `[databases]` → `[[databases]]`.
//!
//! Each entry becomes `name` + an `upstream` URL
//! (`postgres://user:password@host:port/dbname?sslmode=…&sslrootcert=…`, every part
//! percent-encoded) with `pool_size`, `min_size` and `mode` when the entry sets them.
//! - `host` missing or a Unix-socket directory: pgward connects over TCP only, so
//!   `127.0.0.1` (with the entry's port) is used and said so. A host list is kept (pgward
//!   tries the hosts in turn); `load_balance_hosts=round-robin` becomes `random`.
//! - No `user`: see [`super::users::AuthPlan::login`].
//! - `*` (the fallback for any dbname) has no pgward equivalent: it stands for the names
//!   given with `--wildcard-db`, or is a problem (the clients it served would be refused).
//! - `client_encoding`, `datestyle`, `timezone`, `application_name`, `connect_query`,
//!   `reserve_pool`, `max_db_connections`, … get a note each.

use super::emit::{Document, Section};
use super::ini::Entry;
use super::settings::{pool_mode, ServerTls};
use super::users::AuthPlan;
use super::{Log, Options, Settings};

/// Map every `[databases]` entry into `doc`.
pub fn apply(
    entries: &[Entry],
    _settings: &Settings,
    tls: &ServerTls,
    auth: &AuthPlan<'_>,
    opts: &Options,
    doc: &mut Document,
    log: &mut Log,
) {
    // The last entry of a name wins, as in PgBouncer.
    let mut named: Vec<&Entry> = Vec::new();
    let mut wildcard = None;
    for e in entries {
        if e.key == "*" {
            wildcard = Some(e);
            continue;
        }
        if let Some(i) = named.iter().position(|n| n.key == e.key) {
            log.note(
                named[i],
                "a later line defines the same database; this one is skipped",
            );
            named.remove(i);
        }
        named.push(e);
    }
    for e in &named {
        one(e, &e.key, tls, auth, doc, log);
    }
    match (wildcard, opts.wildcard_databases.is_empty()) {
        (Some(w), true) => log.problem(
            Some(&w.at),
            "*",
            "pgward has no fallback database: name the databases the clients use with --wildcard-db NAME (repeat it), or add them to [databases]",
        ),
        (Some(w), false) => {
            for name in &opts.wildcard_databases {
                if named.iter().any(|n| &n.key == name) {
                    continue;
                }
                one(w, name, tls, auth, doc, log);
            }
        }
        (None, false) => log.problem(None, "--wildcard-db", "the ini has no `*` entry to expand"),
        (None, true) => {}
    }
    if named.is_empty() && wildcard.is_none() {
        log.notes.push(super::Note {
            at: None,
            key: "[databases]".into(),
            message:
                "the ini defines no database: the result serves none (add [[databases]] entries)"
                    .into(),
        });
    }
}

/// One database named `name` from entry `e` (for `*`, once per wildcard name).
fn one(
    e: &Entry,
    name: &str,
    tls: &ServerTls,
    auth: &AuthPlan<'_>,
    doc: &mut Document,
    log: &mut Log,
) {
    let key = |p: &str| format!("{name}.{p}");
    let params = match crate::config::conninfo::parse(&e.value) {
        Ok(p) => p,
        Err(err) => {
            log.problem(
                Some(&e.at),
                name,
                format!("database not carried over: {err}"),
            );
            return;
        }
    };
    if name == "pgward" || name.is_empty() {
        log.problem(Some(&e.at), name, "database not carried over: `pgward` is the name of pgward's admin console; rename the database");
        return;
    }
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    };
    let mut sec = Section::default();
    let from = if e.key == "*" {
        format!("{} `*` (--wildcard-db)", e.at)
    } else {
        e.at.to_string()
    };
    sec.set("name", name, from);
    // Hosts: a list is kept (pgward tries them in turn); a Unix socket becomes 127.0.0.1.
    let mut names: Vec<String> = Vec::new();
    for h in get("host").unwrap_or("").split(',').map(str::trim) {
        if !h.is_empty() && !h.starts_with('/') && !h.starts_with('@') {
            names.push(h.to_string());
        } else if !names.contains(&"127.0.0.1".to_string()) {
            log.note_at(&e.at, &key("host"), "PgBouncer connected over a Unix socket; pgward connects over TCP: 127.0.0.1 is used (PostgreSQL must listen there)");
            names.push("127.0.0.1".into());
        }
    }
    let ports: Vec<&str> =
        get("port").map_or(Vec::new(), |p| p.split(',').map(str::trim).collect());
    let mut hosts = Vec::new();
    for (i, h) in names.iter().enumerate() {
        let p = match ports.len() {
            0 => "5432",
            1 => ports[0],
            _ => ports.get(i).copied().unwrap_or(""),
        };
        match p.parse::<u16>() {
            Ok(p) => hosts.push((h.clone(), p)),
            Err(_) => {
                log.problem(
                    Some(&e.at),
                    &key("port"),
                    "database not carried over: not a port number (or not one per host)",
                );
                return;
            }
        }
    }
    let balance = match get("load_balance_hosts") {
        Some("round-robin") if hosts.len() > 1 => {
            log.note_at(&e.at, &key("load_balance_hosts"), "round-robin: carried over as load_balance_hosts=random (pgward picks a random order per new connection)");
            true
        }
        _ => false,
    };
    let dbname = get("dbname").filter(|d| !d.is_empty()).unwrap_or(name);
    let (login, note) = match auth.login(get("user"), get("password"), get("auth_user")) {
        Ok(l) => l,
        Err(why) => {
            log.problem(
                Some(&e.at),
                name,
                format!("database not carried over: {why}"),
            );
            return;
        }
    };
    if let Some(n) = note {
        log.note_at(&e.at, &key("user"), n);
    }
    let sslmode = tls.sslmode.as_deref().filter(|m| {
        matches!(
            *m,
            "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full"
        )
    });
    let mut url = upstream_url(
        &login.user,
        login.password.as_deref(),
        &hosts,
        dbname,
        sslmode,
        tls.sslrootcert.as_deref(),
    );
    if balance {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("load_balance_hosts=random");
    }
    if let Err(err) = crate::config::Upstream::parse(&url) {
        log.problem(
            Some(&e.at),
            name,
            format!("database not carried over: its upstream URL is not valid: {err}"),
        );
        return;
    }
    sec.set("upstream", url, "");
    for (k, v) in &params {
        match k.as_str() {
            "host" | "port" | "dbname" | "user" | "password" | "auth_user" | "load_balance_hosts" => {}
            "pool_size" => match v.parse::<i64>() {
                Ok(n) if n >= 1 => sec.set("pool_size", n, ""),
                _ => log.note_at(&e.at, &key(k), "not carried over: not a pool size of at least 1"),
            },
            "min_pool_size" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => sec.set("min_size", n, ""),
                _ => log.note_at(&e.at, &key(k), "not carried over: not a number"),
            },
            "pool_mode" => match pool_mode(v) {
                Some((m, changed)) => {
                    sec.set("mode", m, "");
                    if changed {
                        log.note_at(&e.at, &key(k), "statement mode is not supported: carried over as transaction mode");
                    }
                }
                None => log.note_at(&e.at, &key(k), "not carried over: must be session, transaction or statement"),
            },
            "client_encoding" | "datestyle" | "timezone" | "application_name" => log.note_at(
                &e.at,
                &key(k),
                "not carried over: pgward passes each client's own startup parameters; set a default with ALTER DATABASE … SET",
            ),
            "connect_query" => log.note_at(&e.at, &key(k), "not carried over: pgward runs no query on new server connections (ALTER ROLE/DATABASE … SET can set parameters)"),
            "reserve_pool" | "reserve_pool_size" => log.note_at(&e.at, &key(k), "not carried over: pgward has no overflow pool; raise pool_size"),
            "max_db_connections" => log.note_at(&e.at, &key(k), "not carried over: the database's pool_size bounds its server connections"),
            "auth_dbname" => log.note_at(&e.at, &key(k), "not carried over: pgward's [auth_query] has one database for all"),
            "server_lifetime" => log.note_at(&e.at, &key(k), "not carried over: [pool] server_lifetime applies to every database"),
            _ => log.note_at(&e.at, &key(k), "not carried over: unknown connection parameter"),
        }
    }
    doc.databases.push(sec);
}

/// `postgres://USER[:PASSWORD]@HOST:PORT[,HOST:PORT…]/DBNAME[?sslmode=…&sslrootcert=…]`,
/// every part percent-encoded.
pub fn upstream_url(
    user: &str,
    password: Option<&str>,
    hosts: &[(String, u16)],
    dbname: &str,
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
) -> String {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|(h, port)| match h.contains(':') && !h.starts_with('[') {
            true => format!("[{h}]:{port}"),
            false => format!("{h}:{port}"),
        })
        .collect();
    let mut url = format!("postgres://{}", encode(user));
    if let Some(p) = password {
        url.push(':');
        url.push_str(&encode(p));
    }
    url.push_str(&format!("@{}/{}", hosts.join(","), encode(dbname)));
    let mut query = Vec::new();
    if let Some(m) = sslmode {
        query.push(format!("sslmode={}", encode(m)));
    }
    if let Some(c) = sslrootcert {
        query.push(format!("sslrootcert={}", encode(c)));
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    url
}

/// Percent-encode everything but letters, digits, `-`, `.`, `_` and `~`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_through_pgwards_parser() {
        let url = upstream_url(
            "u@x",
            Some("p@ss:w+rd ${X}/?#&="),
            &[("fd00::5".to_string(), 6543), ("db2".to_string(), 5433)],
            "my db",
            Some("verify-ca"),
            Some("/etc/ca dir/ca.crt"),
        );
        let u = crate::config::Upstream::parse(&url).unwrap();
        assert_eq!(u.user, "u@x");
        assert_eq!(u.password.as_deref(), Some("p@ss:w+rd ${X}/?#&="));
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("fd00::5", 6543, "my db")
        );
        assert_eq!(u.hosts_text(), "[fd00::5]:6543,db2:5433");
        assert_eq!(u.sslmode, crate::config::SslMode::VerifyCa);
        assert_eq!(
            u.sslrootcert.as_deref(),
            Some(std::path::Path::new("/etc/ca dir/ca.crt"))
        );
    }
}
