//! T5: what a statement that reached PostgreSQL without its tenant's context would run as.
//!
//! That is the database's `baseline_role` if it has one, else the upstream login role. It is
//! checked for what would let such a statement read other tenants' rows: superuser,
//! BYPASSRLS, ownership of tables (owners bypass row-level security unless it is FORCEd, and
//! hold every privilege on them), and the privileges of a tenant's role (membership with
//! INHERIT). The check runs at start, after every reload, and every minute until it
//! succeeded once for the configuration; findings are logged as warnings, shown in
//! `SHOW DATABASES`, on `/ready` and on the status page, and with `role_check = "strict"`
//! tenant clients of the database are refused until the check passes (unknown is the unsafe
//! side).
//!
//! A tenant with its own upstream (`crate::tenancy::dedicated`) is checked the same way under
//! the key `database/tenant`, with its database's `role_check`: its statements without context
//! run as that upstream's login role (or the database's `baseline_role`).

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::config::{Database, RoleCheck, Tenant};
use crate::protocol::backend::PgError;
use crate::proxy::Shared;
use crate::server::params::quote_literal;

/// The result for one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Posture {
    /// Not checked yet (or the check could not connect).
    Unchecked(String),
    /// The role cannot bypass tenant isolation by itself.
    Safe { role: String },
    /// What the role could do without a context.
    Unsafe { role: String, problems: Vec<String> },
}

impl Posture {
    /// One line for SHOW DATABASES and /ready.
    pub fn summary(&self) -> String {
        match self {
            Posture::Unchecked(why) => format!("unchecked ({why})"),
            Posture::Safe { role } => format!("ok (role {role})"),
            Posture::Unsafe { role, problems } => {
                format!("role {role}: {}", problems.join("; "))
            }
        }
    }
}

/// Results by database name.
#[derive(Default)]
pub struct Postures(DashMap<String, Posture>);

impl Postures {
    pub fn get(&self, db: &str) -> Option<Posture> {
        self.0.get(db).map(|p| p.clone())
    }

    /// Every result, by key, sorted (the status page).
    pub fn all(&self) -> Vec<(String, Posture)> {
        let mut v: Vec<_> = self
            .0
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The key of the posture that applies to a client of `db` in `tenant`.
pub fn key(db: &Database, tenant: Option<&Tenant>) -> String {
    match tenant {
        Some(t) if t.dedicated.is_some() => format!("{}/{}", db.name, t.id),
        _ => db.name.clone(),
    }
}

/// What to check, by key: databases that have tenants or a baseline role, and tenants' own
/// upstreams; each with the tenant roles whose privileges the role must not have.
fn checked_databases(shared: &Shared) -> Vec<(String, Arc<Database>, Vec<String>)> {
    let cfg = shared.config();
    let tenants = shared.tenants.load().sorted();
    let mut out = Vec::new();
    for d in cfg
        .databases
        .iter()
        .filter(|d| d.role_check != RoleCheck::Off)
    {
        let of_db: Vec<_> = tenants.iter().filter(|t| t.database == d.name).collect();
        let roles: Vec<String> = of_db.iter().filter_map(|t| t.role.clone()).collect();
        if !of_db.is_empty() || d.upstream.baseline_role.is_some() {
            out.push((d.name.clone(), d.clone(), roles.clone()));
        }
        for t in of_db {
            if let Some(own) = &t.dedicated {
                out.push((key(d, Some(t)), Arc::new(own.database(d)), roles.clone()));
            }
        }
    }
    out
}

/// Findings that are not safe, by key, sorted (for /ready).
pub fn unsafe_findings(shared: &Shared) -> Vec<(String, String)> {
    let mut v: Vec<_> = shared
        .postures
        .0
        .iter()
        .filter(|e| matches!(e.value(), Posture::Unsafe { .. }))
        .map(|e| (e.key().clone(), e.value().summary()))
        .collect();
    v.sort();
    v
}

/// Check every database once; returns whether all checks ran (none is still Unchecked).
pub async fn check_all(shared: &Arc<Shared>) -> bool {
    let mut complete = true;
    let checked = checked_databases(shared);
    shared
        .postures
        .0
        .retain(|k, _| checked.iter().any(|(key, _, _)| key == k));
    for (key, db, roles) in checked {
        let p = check(&db, &roles).await;
        complete &= !matches!(p, Posture::Unchecked(_));
        if let Posture::Unsafe { role, problems } = &p {
            tracing::warn!(
                database = %key,
                %role,
                problems = %problems.join("; "),
                "statements that miss their tenant context would run as a role that can read other tenants' rows; see docs/tenancy.md (recommended setup)"
            );
        }
        shared.postures.0.insert(key, p);
    }
    complete
}

/// The check loop: at start, on reload (`recheck`), and every minute until complete.
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let complete = check_all(&shared).await;
            let wait = if complete {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(60)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shared.posture_recheck.notified() => {}
            }
        }
    })
}

/// With `role_check = "strict"`, why a client of `db` in `tenant` is refused, if it is.
pub fn refusal(shared: &Shared, db: &Database, tenant: &Tenant) -> Option<PgError> {
    if db.role_check != RoleCheck::Strict {
        return None;
    }
    let why = match shared.postures.get(&key(db, Some(tenant))) {
        Some(Posture::Safe { .. }) => return None,
        Some(p) => p.summary(),
        None => "not checked yet".into(),
    };
    Some(PgError::fatal(
        "28000",
        format!(
            "pgward: tenant clients of database \"{}\" are refused (role_check = \"strict\"): {why}",
            key(db, Some(tenant))
        ),
    ))
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

async fn check(db: &Database, tenant_roles: &[String]) -> Posture {
    let run = async {
        let per_host = db
            .upstream
            .host_connect_timeout
            .unwrap_or(db.pool.connect_timeout);
        let mut conn = crate::server::connect(&db.upstream, 0, &db.pool.tcp, per_host)
            .await
            .map_err(|e| e.to_string())?;
        let sql = posture_sql(tenant_roles);
        match crate::server::query::first_row(&mut conn, sql.as_bytes()).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) => Err(e.to_string()),
            Err(()) => Err("connection lost during the check".into()),
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Err(_) => Posture::Unchecked("timed out".into()),
        Ok(Err(e)) => Posture::Unchecked(e),
        Ok(Ok(row)) => judge(&row),
    }
}

/// One row: role, superuser, bypassrls, tables owned, of which RLS-enabled and not forced,
/// tenant roles whose privileges it has.
fn posture_sql(tenant_roles: &[String]) -> String {
    let roles = match tenant_roles.is_empty() {
        true => "ARRAY[]::text[]".to_string(),
        false => format!(
            "ARRAY[{}]::text[]",
            tenant_roles
                .iter()
                .map(|r| quote_literal(r))
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    format!(
        "SELECT r.rolname::text, r.rolsuper::text, r.rolbypassrls::text, \
         (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' \
          AND n.nspname NOT LIKE 'pg\\_%')::text, \
         (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p') AND c.relrowsecurity AND NOT c.relforcerowsecurity \
          AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%')::text, \
         (SELECT string_agg(t, ', ') FROM unnest({roles}) t \
          WHERE t <> r.rolname AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles x WHERE x.rolname = t) \
          AND pg_catalog.pg_has_role(r.oid, t, 'USAGE')) \
         FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
    )
}

fn judge(row: &[Option<String>]) -> Posture {
    let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let role = col(0);
    let mut problems = Vec::new();
    if col(1) == "true" {
        problems.push("is a superuser (bypasses row-level security and every privilege)".into());
    }
    if col(2) == "true" {
        problems.push("has BYPASSRLS".into());
    }
    let owned: u64 = col(3).parse().unwrap_or(0);
    if owned > 0 {
        let unforced: u64 = col(4).parse().unwrap_or(0);
        problems.push(format!(
            "owns {owned} table(s) (an owner holds every privilege on them{})",
            match unforced {
                0 => String::new(),
                n => format!(
                    " and bypasses row-level security on {n} without FORCE ROW LEVEL SECURITY"
                ),
            }
        ));
    }
    let inherited = col(5);
    if !inherited.is_empty() {
        problems.push(format!(
            "has the privileges of tenant role(s) {inherited} (make it NOINHERIT, or use a baseline_role)"
        ));
    }
    match problems.is_empty() {
        true => Posture::Safe { role },
        false => Posture::Unsafe { role, problems },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[&str]) -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    }

    #[test]
    fn judging_a_role() {
        assert_eq!(
            judge(&row(&["nobody", "false", "false", "0", "0", ""])),
            Posture::Safe {
                role: "nobody".into()
            }
        );
        let Posture::Unsafe { problems, .. } =
            judge(&row(&["pgward", "true", "true", "3", "1", "tenant_a"]))
        else {
            panic!("unsafe expected");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[2].contains("3 table(s)") && problems[2].contains("on 1 without FORCE"));
        assert!(problems[3].contains("tenant_a"));
    }

    #[test]
    fn roles_are_quoted() {
        let sql = posture_sql(&["o'brien".into()]);
        assert!(sql.contains("ARRAY[E'o''brien']::text[]"), "{sql}");
        assert!(posture_sql(&[]).contains("ARRAY[]::text[]"));
    }
}
