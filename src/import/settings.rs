//! The `[pgbouncer]` section → pgward's top-level keys, `[pool]` and `[tls]`.
//!
//! What maps to what (docs/operations.md has the full table):
//! - `listen_addr` + `listen_port` → `listen` (one address: `*` → `0.0.0.0`, `localhost` →
//!   `127.0.0.1`, the first of a list).
//! - `pool_mode`, `default_pool_size`, `min_pool_size`, `max_client_conn`, the server
//!   timeouts, `query_wait_timeout`, `query_timeout`, `idle_transaction_timeout`, the TCP
//!   keepalive keys, `max_prepared_statements` → `[pool]`; `client_login_timeout`,
//!   `listen_backlog`, `max_packet_size` → top level.
//! - `client_tls_*` → `[tls]`; `server_tls_sslmode`/`server_tls_ca_file` → each upstream
//!   URL's `sslmode`/`sslrootcert` ([`server_tls`]).
//! - Where PgBouncer's default differs from pgward's and changes behaviour (pool mode
//!   `session`, `max_client_conn` 100, `query_wait_timeout` 120 s, …), PgBouncer's default is
//!   written, so the import behaves as the ini did.
//! - Authentication keys are left to [`super::users`]; every other key gets one note: why
//!   it is not needed or not carried over.

use std::time::Duration;

use super::emit::Document;
use super::ini::Entry;
use super::{Log, Settings};

/// Keys another module maps.
const HANDLED_ELSEWHERE: &[&str] = &[
    "auth_type",
    "auth_file",
    "auth_user",
    "auth_query",
    "auth_dbname",
    "admin_users",
    "stats_users",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "listen_port",
];

/// Keys with nothing to carry over, and why.
const NOT_CARRIED: &[(&str, &str)] = &[
    ("logfile", "not carried over: pgward logs to stderr (log_format = \"json\" for structured logs)"),
    ("syslog", "not carried over: pgward logs to stderr; let the service manager forward it"),
    ("syslog_ident", "not carried over: pgward logs to stderr; let the service manager forward it"),
    ("syslog_facility", "not carried over: pgward logs to stderr; let the service manager forward it"),
    ("pidfile", "not carried over: pgward runs in the foreground and writes no pid file"),
    ("user", "not carried over: pgward does not switch OS users; start it as the user it should run as"),
    ("unix_socket_mode", "not carried over: pgward listens on TCP only (`listen`)"),
    ("unix_socket_group", "not carried over: pgward listens on TCP only (`listen`)"),
    ("server_reset_query", "not carried over: pgward resets session state itself (see docs/tenancy.md)"),
    ("server_reset_query_always", "not carried over: pgward resets session state itself (see docs/tenancy.md)"),
    ("server_check_query", "not carried over: pgward checks idle server connections itself (liveness check before reuse, TCP keepalive)"),
    ("server_check_delay", "not carried over: pgward checks idle server connections itself (liveness check before reuse, TCP keepalive)"),
    ("server_fast_close", "not carried over: on reload pgward replaces a changed pool; its server connections close at the end of their transaction"),
    ("server_round_robin", "not carried over: pgward chooses idle server connections in its own order"),
    ("ignore_startup_parameters", "not needed: pgward accepts every startup parameter and applies it on each client's server connection (extra_float_digits, options `-c …`)"),
    ("track_extra_parameters", "not needed: pgward carries every parameter a client sets across server connections"),
    ("application_name_add_host", "not carried over: pgward does not change application_name"),
    ("auth_hba_file", "not carried over: write the rules as [[access]] entries (docs/configuration.md, Access rules)"),
    ("auth_ident_file", "not carried over: pgward has no ident maps"),
    ("log_connections", "not carried over: pgward's log level is set with the PGWARD_LOG environment variable"),
    ("log_disconnections", "not carried over: pgward's log level is set with the PGWARD_LOG environment variable"),
    ("log_pooler_errors", "not carried over: pgward's log level is set with the PGWARD_LOG environment variable"),
    ("log_stats", "not carried over: statistics are on /metrics (http_listen) and in SHOW STATS"),
    ("verbose", "not carried over: pgward's log level is set with the PGWARD_LOG environment variable"),
    ("reserve_pool_size", "not carried over: pgward has no overflow pool; raise [pool] size, or give tenants reserved_server_connections"),
    ("reserve_pool_timeout", "not carried over: pgward has no overflow pool; raise [pool] size, or give tenants reserved_server_connections"),
    ("max_db_connections", "not carried over: pgward bounds server connections by each database's pool size (and per tenant with max_server_connections)"),
    ("max_user_connections", "not carried over: pgward has no per-user connection limit"),
    ("client_idle_timeout", "not carried over: pgward does not disconnect idle clients"),
    ("autodb_idle_timeout", "not carried over: pgward has no automatically created databases"),
    ("suspend_timeout", "not carried over: pgward has no online restart (SUSPEND)"),
    ("pkt_buf", "not carried over: pgward sizes its buffers itself"),
    ("sbuf_loopcnt", "not carried over: pgward has no such tuning knob"),
    ("tcp_defer_accept", "not carried over: pgward has no such tuning knob"),
    ("tcp_socket_buffer", "not carried over: pgward has no such tuning knob"),
    ("so_reuseport", "not carried over: run one pgward process per address (workers sets its threads)"),
    ("dns_max_ttl", "not carried over: pgward resolves host names when it connects, with the system resolver"),
    ("dns_nxdomain_ttl", "not carried over: pgward resolves host names when it connects, with the system resolver"),
    ("dns_zone_check_period", "not carried over: pgward resolves host names when it connects, with the system resolver"),
    ("resolv_conf", "not carried over: pgward resolves host names with the system resolver"),
    ("disable_pqexec", "not carried over: pgward has no such restriction"),
    ("conffile", "not carried over: no meaning for pgward"),
    ("service_name", "not carried over: no meaning for pgward"),
    ("job_name", "not carried over: no meaning for pgward"),
    ("peer_id", "not carried over: pgward has no peering of several processes"),
    ("client_tls_protocols", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("client_tls_ciphers", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("client_tls_dheparams", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("client_tls_ecdhcurve", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("server_tls_protocols", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("server_tls_ciphers", "not carried over: pgward's TLS offers TLS 1.2 and 1.3 with its own cipher suites"),
    ("server_tls_key_file", "not carried over: pgward sends no client certificate to PostgreSQL"),
    ("server_tls_cert_file", "not carried over: pgward sends no client certificate to PostgreSQL"),
];

/// Server-side TLS for every upstream URL.
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    /// `server_tls_sslmode`, when set (PgBouncer's default `prefer` is pgward's too).
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

pub fn server_tls(s: &Settings) -> ServerTls {
    ServerTls {
        sslmode: s
            .value("server_tls_sslmode")
            .map(|v| v.to_ascii_lowercase()),
        sslrootcert: s
            .value("server_tls_ca_file")
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    }
}

/// Map the `[pgbouncer]` section onto `doc`'s top level, `[pool]` and `[tls]`.
pub fn apply(s: &Settings, doc: &mut Document, log: &mut Log) {
    pgbouncer_defaults(doc);
    listen(s, doc, log);
    client_tls(s, doc, log);
    for key in &s.order {
        let e = &s.map[key];
        if HANDLED_ELSEWHERE.contains(&key.as_str())
            || key == "listen_addr"
            || (key.starts_with("client_tls_") && !is_tls_tuning(key))
        {
            continue;
        }
        if let Some((_, why)) = NOT_CARRIED.iter().find(|(k, _)| k == key) {
            log.note(e, *why);
            continue;
        }
        one(e, doc, log);
    }
}

fn is_tls_tuning(key: &str) -> bool {
    matches!(
        key,
        "client_tls_protocols"
            | "client_tls_ciphers"
            | "client_tls_dheparams"
            | "client_tls_ecdhcurve"
    )
}

/// PgBouncer's defaults where pgward's differ and the difference shows.
fn pgbouncer_defaults(doc: &mut Document) {
    let c = "PgBouncer's default";
    doc.pool.set("mode", "session", c);
    doc.pool.set("max_client_connections", 100_i64, c);
    doc.pool.set(
        "checkout_timeout",
        "120s",
        format!("{c} (query_wait_timeout)"),
    );
    doc.pool.set(
        "connect_timeout",
        "15s",
        format!("{c} (server_connect_timeout)"),
    );
    doc.pool.set("server_login_retry", "15s", c);
    doc.top.set("client_login_timeout", "60s", c);
}

/// One carried-over key.
fn one(e: &Entry, doc: &mut Document, log: &mut Log) {
    let from = format!("{} {}", e.at, e.key);
    let v = e.value.as_str();
    let invalid = |log: &mut Log, what: &str| {
        log.note(e, format!("not carried over: {what}"));
    };
    match e.key.as_str() {
        "pool_mode" => match pool_mode(v) {
            Some((m, changed)) => {
                doc.pool.set("mode", m, from);
                if changed {
                    log.note(e, STATEMENT_MODE);
                }
            }
            None => invalid(log, "must be session, transaction or statement"),
        },
        "default_pool_size" => match v.parse::<i64>() {
            Ok(n) if n >= 1 => doc.pool.set("size", n, from),
            _ => invalid(log, "not a pool size of at least 1"),
        },
        "min_pool_size" => match v.parse::<i64>() {
            Ok(n) if n >= 0 => doc.pool.set("min_size", n, from),
            _ => invalid(log, "not a number"),
        },
        "max_client_conn" => match v.parse::<i64>() {
            Ok(n) if n >= 0 => doc.pool.set("max_client_connections", n, from),
            _ => invalid(log, "not a number"),
        },
        "listen_backlog" => match v.parse::<i64>() {
            Ok(n) if n >= 1 => doc.top.set("listen_backlog", n, from),
            _ => invalid(log, "not a number of at least 1"),
        },
        "max_packet_size" => match v.parse::<i64>() {
            Ok(n) if n >= 1024 => doc.top.set("max_message_size", n, from),
            _ => invalid(log, "pgward's max_message_size must be at least 1024 bytes"),
        },
        "max_prepared_statements" => match v.parse::<i64>() {
            Ok(0) => log.note(
                e,
                "not needed: pgward always keeps protocol-level prepared statements working in transaction mode",
            ),
            Ok(n) if n > 0 => doc.pool.set("max_prepared_statements", n, from),
            _ => invalid(log, "not a number"),
        },
        "tcp_keepalive" => match v {
            "0" => doc.pool.set("tcp_keepidle", "0", format!("{from} (off)")),
            "1" => log.note(e, "not needed: pgward's server connections use TCP keepalive by default"),
            _ => invalid(log, "must be 0 or 1"),
        },
        "tcp_keepcnt" => match v.parse::<i64>() {
            Ok(0) => log.note(e, "not carried over: 0 means the system's default; pgward's default is 3"),
            Ok(n) if n > 0 => doc.pool.set("tcp_keepcnt", n, from),
            _ => invalid(log, "not a number"),
        },
        "unix_socket_dir" => {
            if !v.is_empty() {
                log.note(e, "not carried over: pgward listens on TCP only (`listen`)");
            }
        }
        key => match duration_key(key) {
            Some((target, unit, zero)) => match parse_time(v, unit) {
                Some(d) if d.is_zero() => match zero {
                    Zero::Same => set_duration(doc, target, d, from),
                    Zero::Off => set_duration(doc, target, Duration::ZERO, from),
                    Zero::Forever => set_duration(
                        doc,
                        target,
                        FOREVER,
                        format!("{from} = 0: no limit in PgBouncer"),
                    ),
                    Zero::SystemDefault => log.note(
                        e,
                        "not carried over: 0 means the system's default; pgward sets its own (docs/configuration.md)",
                    ),
                },
                Some(d) => set_duration(doc, target, d, from),
                None => invalid(log, "not a time value"),
            },
            None => log.note(e, "not carried over: unknown PgBouncer setting"),
        },
    }
}

const STATEMENT_MODE: &str = "statement mode is not supported: carried over as transaction mode (multi-statement transactions are allowed, not refused)";

/// `pool_mode` → pgward's mode, and whether the meaning changed (statement mode).
pub fn pool_mode(v: &str) -> Option<(&'static str, bool)> {
    match v.to_ascii_lowercase().as_str() {
        "session" => Some(("session", false)),
        "transaction" => Some(("transaction", false)),
        "statement" => Some(("transaction", true)),
        _ => None,
    }
}

/// A year stands for "no limit" where pgward needs a finite duration.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Clone, Copy)]
enum Zero {
    /// 0 means the same in pgward.
    Same,
    /// 0 means "off" in both.
    Off,
    /// 0 means "no limit" in PgBouncer; pgward needs a finite value.
    Forever,
    /// 0 means "the operating system's default".
    SystemDefault,
}

/// PgBouncer time key → (pgward key, default unit in seconds, meaning of 0).
fn duration_key(key: &str) -> Option<(&'static str, f64, Zero)> {
    Some(match key {
        "query_wait_timeout" => ("pool.checkout_timeout", 1.0, Zero::Forever),
        "server_idle_timeout" => ("pool.idle_timeout", 1.0, Zero::Forever),
        "server_lifetime" => ("pool.server_lifetime", 1.0, Zero::Same),
        "server_connect_timeout" => ("pool.connect_timeout", 1.0, Zero::Forever),
        "server_login_retry" => ("pool.server_login_retry", 1.0, Zero::Same),
        "query_timeout" => ("pool.query_timeout", 1.0, Zero::Off),
        "idle_transaction_timeout" => ("pool.idle_transaction_timeout", 1.0, Zero::Off),
        "client_login_timeout" => ("client_login_timeout", 1.0, Zero::Forever),
        "stats_period" => ("stats_period", 1.0, Zero::Same),
        "tcp_keepidle" => ("pool.tcp_keepidle", 1.0, Zero::SystemDefault),
        "tcp_keepintvl" => ("pool.tcp_keepintvl", 1.0, Zero::SystemDefault),
        "tcp_user_timeout" => ("pool.tcp_user_timeout", 0.001, Zero::Off),
        _ => return None,
    })
}

fn set_duration(doc: &mut Document, target: &str, d: Duration, comment: String) {
    let text = humantime_text(d);
    match target.strip_prefix("pool.") {
        Some(k) => doc.pool.set(k, text, comment),
        None => doc.top.set(target, text, comment),
    }
}

/// A duration as pgward reads it: `0`, whole days (`365d`), seconds (`30s`) or milliseconds.
pub fn humantime_text(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d.subsec_nanos() == 0 && d.as_secs() % 86400 == 0 {
        format!("{}d", d.as_secs() / 86400)
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

/// A PgBouncer time value: a number (possibly fractional) in `unit` seconds, or with a unit
/// suffix (`us`, `ms`, `s`, `min`, `h`, `d`).
pub fn parse_time(v: &str, unit: f64) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, suffix) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match suffix.trim() {
        "" => unit,
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "min" | "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    let secs = n * scale;
    (0.0..1e12)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

fn listen(s: &Settings, doc: &mut Document, log: &mut Log) {
    let port_entry = s.get("listen_port");
    let port = match port_entry.map(|e| (e, e.value.parse::<u16>())) {
        None => 6432,
        Some((_, Ok(p))) => p,
        Some((e, Err(_))) => {
            log.note(
                e,
                "not carried over: not a port number; pgward's default 6432 is used",
            );
            6432
        }
    };
    let mut from: Vec<String> = Vec::new();
    let host = match s.get("listen_addr") {
        None => {
            doc.top.set(
                "listen",
                format!("127.0.0.1:{port}"),
                "no listen_addr: PgBouncer listened on its Unix socket only; pgward listens on TCP",
            );
            if let Some(e) = port_entry {
                log.note(e, "carried over with 127.0.0.1: there is no listen_addr, so PgBouncer listened on its Unix socket only; pgward listens on TCP");
            }
            return;
        }
        Some(e) => {
            from.push(format!("{} listen_addr", e.at));
            let list: Vec<&str> = e
                .value
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect();
            if list.len() > 1 {
                log.note(
                    e,
                    format!(
                        "pgward listens on one address: {} is used, not {}",
                        list[0],
                        list[1..].join(", ")
                    ),
                );
            }
            match list.first().copied() {
                None => {
                    log.note(e, "empty: PgBouncer listened on its Unix socket only; pgward listens on TCP at 127.0.0.1");
                    "127.0.0.1".to_string()
                }
                Some("*") => {
                    if list.len() == 1 {
                        log.note(e, "`*` is carried over as 0.0.0.0 (all IPv4 addresses); for IPv6 as well, set listen = \"[::]:PORT\"");
                    }
                    "0.0.0.0".to_string()
                }
                Some(a) if a.eq_ignore_ascii_case("localhost") => "127.0.0.1".to_string(),
                Some(a) => match a.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                    Ok(ip) => ip.to_string(),
                    Err(_) => {
                        use std::net::ToSocketAddrs;
                        match (a, port).to_socket_addrs().ok().and_then(|mut i| i.next()) {
                            Some(sa) => {
                                log.note(e, format!("pgward listens on an address, not a host name: {a} resolved to {} now", sa.ip()));
                                match sa.ip() {
                                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                                    ip => ip.to_string(),
                                }
                            }
                            None => {
                                log.note(e, format!("pgward listens on an address, not a host name, and {a} does not resolve here: 127.0.0.1 is used"));
                                "127.0.0.1".to_string()
                            }
                        }
                    }
                },
            }
        }
    };
    if let Some(e) = port_entry {
        from.push(format!("{} listen_port", e.at));
    }
    doc.top
        .set("listen", format!("{host}:{port}"), from.join(", "));
}

fn client_tls(s: &Settings, doc: &mut Document, log: &mut Log) {
    let mode_entry = s.get("client_tls_sslmode");
    let mode = mode_entry
        .map(|e| e.value.to_ascii_lowercase())
        .unwrap_or_else(|| "disable".into());
    let cert = s
        .get("client_tls_cert_file")
        .filter(|e| !e.value.is_empty());
    let key = s.get("client_tls_key_file").filter(|e| !e.value.is_empty());
    let ca = s.get("client_tls_ca_file").filter(|e| !e.value.is_empty());
    let client_tls = match mode.as_str() {
        "disable" => None,
        "allow" | "prefer" => Some("allow"),
        "require" | "verify-ca" | "verify-full" => Some("require"),
        _ => {
            if let Some(e) = mode_entry {
                log.note(e, "not carried over: unknown sslmode; client TLS is off");
            }
            None
        }
    };
    let Some(client_tls) = client_tls else {
        for e in [cert, key, ca].into_iter().flatten() {
            log.note(e, "not carried over: client_tls_sslmode is disable");
        }
        return;
    };
    let (Some(cert), Some(key)) = (cert, key) else {
        if let Some(e) = mode_entry {
            log.note(
                e,
                "not carried over: client TLS needs client_tls_cert_file and client_tls_key_file",
            );
        }
        return;
    };
    let mut tls = super::emit::Section::default();
    tls.set(
        "cert",
        cert.value.as_str(),
        format!("{} client_tls_cert_file", cert.at),
    );
    tls.set(
        "key",
        key.value.as_str(),
        format!("{} client_tls_key_file", key.at),
    );
    let mode_from = mode_entry
        .map(|e| format!("{} client_tls_sslmode = {}", e.at, e.value))
        .unwrap_or_default();
    tls.set("client_tls", client_tls, mode_from);
    match (mode.as_str(), ca) {
        ("verify-ca" | "verify-full", Some(ca)) => {
            tls.set("client_ca", ca.value.as_str(), format!("{} client_tls_ca_file", ca.at));
            if mode == "verify-full" {
                if let Some(e) = mode_entry {
                    log.note(e, "verify-full is carried over as client certificates checked against client_ca; pgward does not match the certificate's name to the user");
                }
            }
        }
        ("verify-ca" | "verify-full", None) => {
            if let Some(e) = mode_entry {
                log.note(e, "client certificates are not checked: pgward needs client_ca (client_tls_ca_file) and has no system trust store");
            }
        }
        (_, Some(ca)) => log.note(ca, "not carried over: with client_tls_sslmode below verify-ca, PgBouncer asked for no client certificate either"),
        _ => {}
    }
    if mode == "prefer" {
        if let Some(e) = mode_entry {
            log.note(
                e,
                "carried over as client_tls = \"allow\" (TLS when the client asks for it)",
            );
        }
    }
    doc.tls = Some(tls);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_values() {
        assert_eq!(parse_time("15", 1.0), Some(Duration::from_secs(15)));
        assert_eq!(parse_time("0.5", 1.0), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("250", 0.001), Some(Duration::from_millis(250)));
        assert_eq!(parse_time("2min", 1.0), Some(Duration::from_secs(120)));
        assert_eq!(parse_time("100ms", 1.0), Some(Duration::from_millis(100)));
        assert_eq!(parse_time("soon", 1.0), None);
        assert_eq!(parse_time("-1", 1.0), None);
        assert_eq!(humantime_text(Duration::from_millis(1500)), "1500ms");
        assert_eq!(humantime_text(Duration::from_secs(120)), "120s");
        assert_eq!(humantime_text(Duration::ZERO), "0");
        assert_eq!(humantime_text(FOREVER), "365d");
        assert_eq!(humantime::parse_duration("365d").unwrap(), FOREVER);
    }
}
