//! Which database, user and tenant a StartupMessage selects (CONTRACT: "How a client picks its
//! tenant"): database alias, then `user.tenant` suffix, then `-c pgward.tenant=…` in
//! `options`. The `pgward.tenant` option is consumed; other `-c` options become startup
//! parameters (settings the client wants for its session).

use std::sync::Arc;

use crate::config::{Config, Tenant};
use crate::protocol::backend::PgError;
use crate::protocol::startup::StartupMessage;
use crate::tenancy::TenantContexts;

#[derive(Debug)]
pub struct Resolved {
    pub user: String,
    pub database: String,
    pub tenant: Option<Arc<Tenant>>,
    /// Startup parameters to honour for the session (without user/database/options).
    pub params: Vec<(String, String)>,
    pub admin: bool,
}

pub const ADMIN_DB: &str = "pgward";
/// PgBouncer's name for its admin console, accepted too (exporters and scripts connect to
/// it) unless a database or tenant has that name.
pub const ADMIN_ALIAS: &str = "pgbouncer";

pub fn resolve(
    cfg: &Config,
    tenants: &TenantContexts,
    m: &StartupMessage,
) -> Result<Resolved, PgError> {
    let raw_user = m.get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        PgError::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let raw_db = m
        .get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(raw_user);

    // As in PostgreSQL, `options` are applied first and explicit startup parameters override.
    let mut params = Vec::new();
    let mut explicit = Vec::new();
    let mut option_tenant = None;
    for (k, v) in &m.params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (name, value) in parse_options(v)? {
                    if name.eq_ignore_ascii_case("pgward.tenant") {
                        option_tenant = Some(value);
                    } else {
                        params.push((name, value));
                    }
                }
            }
            _ => explicit.push((k.clone(), v.clone())),
        }
    }
    params.extend(explicit);
    if m.get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(PgError::fatal(
            "08P01",
            "pgward does not support replication connections",
        ));
    }

    let alias =
        raw_db == ADMIN_ALIAS && cfg.database(raw_db).is_none() && tenants.tenant(raw_db).is_none();
    if raw_db == ADMIN_DB || alias {
        return Ok(Resolved {
            user: raw_user.to_string(),
            database: ADMIN_DB.into(),
            tenant: None,
            params,
            admin: true,
        });
    }

    let mut user = raw_user.to_string();
    let mut database = raw_db.to_string();
    let mut tenant = None;
    // 1. database alias
    if cfg.database(raw_db).is_none() {
        if let Some(t) = tenants.tenant(raw_db) {
            database = t.database.clone();
            tenant = Some(t.clone());
        }
    }
    // 2. user suffix
    if !cfg.users.contains_key(raw_user) {
        if let Some((base, tid)) = raw_user.rsplit_once('.') {
            if cfg.users.contains_key(base) {
                user = base.to_string();
                match tenants.tenant(tid) {
                    Some(t) if tenant.is_none() => tenant = Some(t),
                    Some(_) => {}
                    None => {
                        return Err(PgError::fatal(
                            "28000",
                            format!(
                                "pgward: unknown tenant \"{tid}\" (from user name \"{raw_user}\")"
                            ),
                        ))
                    }
                }
            }
        }
    }
    // 3. startup option
    if let Some(tid) = option_tenant {
        match tenants.tenant(&tid) {
            Some(t) if tenant.is_none() => tenant = Some(t),
            Some(_) => {}
            None => {
                return Err(PgError::fatal(
                    "28000",
                    format!("pgward: unknown tenant \"{tid}\" (from options pgward.tenant)"),
                ))
            }
        }
    }
    if let Some(t) = &tenant {
        if cfg.database(raw_db).is_some() && raw_db != t.database {
            return Err(PgError::fatal(
                "28000",
                format!(
                    "pgward: tenant \"{}\" belongs to database \"{}\", not \"{raw_db}\"",
                    t.id, t.database
                ),
            ));
        }
        database = t.database.clone();
    }
    Ok(Resolved {
        user,
        database,
        tenant,
        params,
        admin: false,
    })
}

/// Parse libpq's `options`: whitespace-separated `-c name=value`, `-cname=value` or
/// `--name=value`, with backslash escaping a following character.
pub fn parse_options(s: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let bad = |w: &str| {
        PgError::fatal(
            "22023",
            format!("invalid command-line argument for server process: {w}"),
        )
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| bad("-c"))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else {
            return Err(bad(&w));
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| bad(&setting))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_forms() {
        assert_eq!(
            parse_options("-c pgward.tenant=acme --statement-timeout=5 -cwork_mem=1MB -c a=b\\ c")
                .unwrap(),
            vec![
                ("pgward.tenant".into(), "acme".into()),
                ("statement_timeout".into(), "5".into()),
                ("work_mem".into(), "1MB".into()),
                ("a".into(), "b c".into()),
            ]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c noequals").is_err());
        assert!(parse_options("").unwrap().is_empty());
    }

    fn cfg() -> Config {
        let toml = r#"
            [[databases]]
            name = "app"
            upstream = "postgres://u:p@127.0.0.1:5432/app"
            [[users]]
            name = "app_user"
            password = "pw"
            [[tenants]]
            id = "acme"
            database = "app"
            search_path = ["acme"]
        "#;
        Config::from_toml(toml, std::path::Path::new("t.toml")).unwrap()
    }

    fn resolve(c: &Config, m: &StartupMessage) -> Result<Resolved, PgError> {
        super::resolve(c, &TenantContexts::build(c, &[]), m)
    }

    fn msg(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            major: 3,
            minor: 0,
            params: params
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn three_ways_to_pick_a_tenant() {
        let c = cfg();
        let r = resolve(&c, &msg(&[("user", "app_user"), ("database", "acme")])).unwrap();
        assert_eq!(
            (r.database.as_str(), r.tenant.unwrap().id.as_str()),
            ("app", "acme")
        );
        let r = resolve(&c, &msg(&[("user", "app_user.acme"), ("database", "app")])).unwrap();
        assert_eq!(
            (r.user.as_str(), r.tenant.unwrap().id.as_str()),
            ("app_user", "acme")
        );
        let r = resolve(
            &c,
            &msg(&[
                ("user", "app_user"),
                ("database", "app"),
                ("options", "-c pgward.tenant=acme -c x.y=1"),
            ]),
        )
        .unwrap();
        assert_eq!(r.tenant.unwrap().id, "acme");
        assert_eq!(r.params, vec![("x.y".to_string(), "1".to_string())]);
        // explicit startup parameters come after (override) `options`, as in PostgreSQL
        let r = resolve(
            &c,
            &msg(&[
                ("user", "app_user"),
                ("search_path", "acme"),
                ("options", "-c search_path=globex"),
            ]),
        )
        .unwrap();
        let p = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            r.params,
            vec![p("search_path", "globex"), p("search_path", "acme")]
        );
        let r = resolve(&c, &msg(&[("user", "app_user"), ("database", "app")])).unwrap();
        assert!(r.tenant.is_none());
        let e = resolve(&c, &msg(&[("user", "app_user.nope"), ("database", "app")])).unwrap_err();
        assert_eq!(e.code, "28000");
        assert!(e.message.contains("nope"));
        let e = resolve(
            &c,
            &msg(&[("user", "app_user"), ("options", "-c pgward.tenant=zzz")]),
        )
        .unwrap_err();
        assert!(e.message.contains("zzz"));
        assert!(
            resolve(&c, &msg(&[("user", "x"), ("database", "pgward")]))
                .unwrap()
                .admin
        );
    }
}
