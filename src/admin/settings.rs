//! `SHOW CONFIG` and `SET`.
//!
//! `SHOW CONFIG` lists pgward's effective configuration, one row per key (dotted paths,
//! passwords masked), with its default and whether it can change without a restart; then
//! PgBouncer's names for the settings pgward has under another name ([`ALIASES`]), with
//! PgBouncer's units (seconds), so tools that read `max_client_conn` or `default_pool_size`
//! find them.
//!
//! `SET key = value` changes one runtime setting in memory ([`SETTABLE`] or an alias) through
//! the same validation and reload as the file; a later `RELOAD` re-reads the file and drops
//! it (as in PgBouncer).

use std::time::Duration;

use super::{s, Table};
use crate::config::Config;
use crate::protocol::backend::PgError;
use crate::proxy::Shared;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Duration,
    Text,
    Bool,
}

/// pgward keys `SET` may change, and the type of their value.
const SETTABLE: &[(&str, Kind)] = &[
    ("pool.mode", Kind::Text),
    ("pool.size", Kind::Int),
    ("pool.min_size", Kind::Int),
    ("pool.max_client_connections", Kind::Int),
    ("pool.checkout_timeout", Kind::Duration),
    ("pool.idle_timeout", Kind::Duration),
    ("pool.server_lifetime", Kind::Duration),
    ("pool.connect_timeout", Kind::Duration),
    ("pool.server_login_retry", Kind::Duration),
    ("pool.query_timeout", Kind::Duration),
    ("pool.idle_transaction_timeout", Kind::Duration),
    ("pool.ready_probe_timeout", Kind::Duration),
    ("pool.fair_sharing", Kind::Bool),
    ("pool.session_state", Kind::Text),
    ("pool.max_prepared_statements", Kind::Int),
    ("client_login_timeout", Kind::Duration),
    ("max_pending_logins", Kind::Int),
    ("max_message_size", Kind::Int),
    ("stats_period", Kind::Duration),
];

/// PgBouncer's name → pgward's key.
const ALIASES: &[(&str, &str)] = &[
    ("pool_mode", "pool.mode"),
    ("default_pool_size", "pool.size"),
    ("min_pool_size", "pool.min_size"),
    ("max_client_conn", "pool.max_client_connections"),
    ("query_wait_timeout", "pool.checkout_timeout"),
    ("server_idle_timeout", "pool.idle_timeout"),
    ("server_lifetime", "pool.server_lifetime"),
    ("server_connect_timeout", "pool.connect_timeout"),
    ("server_login_retry", "pool.server_login_retry"),
    ("query_timeout", "pool.query_timeout"),
    ("idle_transaction_timeout", "pool.idle_transaction_timeout"),
    ("max_prepared_statements", "pool.max_prepared_statements"),
];

/// Keys that need a restart.
fn restart_only(key: &str) -> bool {
    matches!(
        key,
        "listen" | "http_listen" | "workers" | "log_format" | "listen_backlog" | "upgrade_socket"
    ) || key.starts_with("metrics.")
}

/// The configuration as (key, value) rows.
fn rows(cfg: &Config) -> Vec<(String, String)> {
    let text = crate::config::render_effective(cfg);
    let value: toml::Value =
        toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    let mut flat = Vec::new();
    flatten("", &value, &mut flat);
    flat
}

pub fn show(shared: &Shared) -> Table {
    let cfg = shared.config();
    let mut t = Table::new("ssss", &["key", "value", "default", "changeable"]);
    let defaults = Config::from_toml_with_env("", &cfg.path, &|_| None)
        .map(|d| rows(&d))
        .unwrap_or_default();
    let default_of = |k: &str| {
        defaults
            .iter()
            .find(|(d, _)| d == k)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let current = rows(&cfg);
    for (k, v) in &current {
        let changeable = if restart_only(k) { "no" } else { "yes" };
        t.row(vec![s(k), s(v), s(default_of(k)), s(changeable)]);
    }
    for (alias, key) in ALIASES {
        let Some((_, v)) = current.iter().find(|(k, _)| k == key) else {
            continue;
        };
        let kind = SETTABLE.iter().find(|(k, _)| k == key).map(|(_, k)| *k);
        let (value, default) = match kind {
            Some(Kind::Duration) => (seconds(v), seconds(&default_of(key))),
            _ => (v.clone(), default_of(key)),
        };
        t.row(vec![s(alias), s(value), s(default), s("yes")]);
    }
    t
}

/// A duration as PgBouncer shows it: seconds.
fn seconds(v: &str) -> String {
    match humantime::parse_duration(v) {
        Ok(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Ok(d) => format!("{}", d.as_secs_f64()),
        Err(_) if v == "0" => "0".into(),
        Err(_) => v.to_string(),
    }
}

/// `SET key = value` (or `key TO value`).
pub fn set(shared: &Shared, assignment: &str) -> Result<(), PgError> {
    let (key, value) = assignment
        .split_once('=')
        .or_else(|| {
            let lower = assignment.to_ascii_lowercase();
            lower
                .find(" to ")
                .map(|i| (&assignment[..i], &assignment[i + 4..]))
        })
        .ok_or_else(|| PgError::error("42601", "SET: expected SET key = value"))?;
    let key = key.trim().to_ascii_lowercase();
    let raw = value.trim();
    let raw = raw
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .map(|v| v.replace("''", "'"))
        .unwrap_or_else(|| raw.to_string());
    let (target, alias) = match ALIASES.iter().find(|(a, _)| *a == key) {
        Some((_, k)) => (*k, true),
        None => (key.as_str(), false),
    };
    let Some((_, kind)) = SETTABLE.iter().find(|(k, _)| *k == target) else {
        let why = match restart_only(target) {
            true => "it needs a restart",
            false => "change it in the configuration file and RELOAD",
        };
        return Err(PgError::error(
            "55P02",
            format!("SET: {key} cannot be changed with SET: {why}"),
        ));
    };
    let bad = |why: &str| PgError::error("22023", format!("SET {key}: {raw:?} {why}"));
    let value = match kind {
        Kind::Int => toml::Value::Integer(raw.parse().map_err(|_| bad("is not an integer"))?),
        Kind::Bool => toml::Value::Boolean(match raw.to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => true,
            "false" | "off" | "no" | "0" => false,
            _ => return Err(bad("is not a boolean")),
        }),
        Kind::Text => toml::Value::String(raw.clone()),
        // A bare number is seconds (PgBouncer's unit); else a duration such as "250ms".
        Kind::Duration => match raw.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => toml::Value::String(
                humantime::format_duration(Duration::from_secs_f64(secs)).to_string(),
            ),
            _ if !alias || humantime::parse_duration(&raw).is_ok() => {
                toml::Value::String(raw.clone())
            }
            _ => return Err(bad("is not a number of seconds")),
        },
    };
    let cfg = shared.config();
    let new = cfg
        .with_value(target, value)
        .map_err(|e| PgError::error("22023", format!("SET {key}: {e}")))?;
    shared
        .reload(new)
        .map_err(|e| PgError::error("F0000", format!("SET {key}: {e}")))
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = match prefix.is_empty() {
                    true => k.clone(),
                    false => format!("{prefix}.{k}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alias_names_a_settable_key() {
        for (alias, key) in ALIASES {
            assert!(
                SETTABLE.iter().any(|(k, _)| k == key),
                "{alias} → {key} is not settable"
            );
        }
    }

    #[test]
    fn durations_are_shown_in_seconds_like_pgbouncer() {
        assert_eq!(seconds("5s"), "5");
        assert_eq!(seconds("10m"), "600");
        assert_eq!(seconds("250ms"), "0.25");
        assert_eq!(seconds("0"), "0");
    }

    #[test]
    fn set_changes_a_value_through_validation() {
        let path = std::path::Path::new("pgward.toml");
        let cfg = Config::from_toml_with_env("[pool]\nsize = 5\n", path, &|_| None).unwrap();
        let c = cfg
            .with_value("pool.size", toml::Value::Integer(9))
            .unwrap();
        assert_eq!(c.raw.pool.size, 9);
        let e = cfg
            .with_value("pool.size", toml::Value::Integer(0))
            .unwrap_err();
        assert!(e.to_string().contains("pool.size"), "{e}");
        let c = cfg
            .with_value("stats_period", toml::Value::String("2s".into()))
            .unwrap();
        assert_eq!(c.raw.stats_period, "2s");
    }
}
