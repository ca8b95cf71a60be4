//! At login, the client's startup parameters are checked against the server, so that a value
//! PostgreSQL rejects refuses the login (FATAL with PostgreSQL's SQLSTATE and message), as a
//! direct connection would be refused, instead of failing the client's first statement.
//!
//! Invariants:
//! - Only values that differ from the pool's baseline are checked, each (name, value) once
//!   per pool: a value the server accepted is remembered (`Pool::accepted_params`, bounded)
//!   and later logins with it cost nothing. `application_name` is not checked: PostgreSQL
//!   accepts any value.
//! - The check runs `SELECT pg_catalog.set_config(name, value, true), …` as one Query: its own
//!   implicit transaction, so nothing stays on the server connection.
//! - It never makes a login wait for the pool: without a connection available at once (pool
//!   busy or paused, upstream down) the check is skipped, and an invalid value still fails the
//!   client at its first statement, where the parameters are applied (`Action::SyncParams`).
//! - `set_config` returns the value as PostgreSQL stores it (`utf8` → `UTF8`, `iso,dmy` →
//!   `ISO, DMY`): the client's parameters take that spelling, so the ParameterStatus it is
//!   told at login is what a direct connection would report.

use std::sync::Arc;
use std::time::Duration;

use crate::pool::Pool;
use crate::protocol::backend::PgError;
use crate::server::params::{set_config_select, ClientParams};

/// Remembered accepted values per pool; past this the memory starts again.
const MAX_ACCEPTED: usize = 4096;

/// Longest a check may take before it is abandoned (and its connection closed).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Parameters PostgreSQL accepts with any value.
const ANY_VALUE: &[&str] = &["application_name"];

/// Check `params`' startup values on `pool`'s server, and take PostgreSQL's spelling of each.
/// `Err` is the FATAL to refuse the login with.
pub async fn check(
    pool: &Arc<Pool>,
    class: &crate::pool::ClassKey,
    params: &mut ClientParams,
) -> Result<(), PgError> {
    let mut known: Vec<(String, String)> = Vec::new();
    let unchecked: Vec<(String, String, String)> = {
        let accepted = pool
            .accepted_params
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        params
            .values
            .overrides()
            .filter(|(l, _, _)| !ANY_VALUE.contains(l))
            .filter_map(|(l, name, v)| {
                let key = format!("{l}\0{v}");
                match accepted.get(key.as_str()) {
                    Some(canonical) => {
                        known.push((name.to_string(), canonical.to_string()));
                        None
                    }
                    None => Some((name.to_string(), v.to_string(), key)),
                }
            })
            .collect()
    };
    for (name, canonical) in known {
        params.set(&name, &canonical);
    }
    if unchecked.is_empty() {
        return Ok(());
    }
    // Best effort and brief: only a connection nobody waits for, outside the tenant's limit.
    let Some(Ok(mut co)) = pool.checkout_now(class, crate::pool::Share::EQUAL).await else {
        return Ok(());
    };
    let sql = set_config_select(
        unchecked.iter().map(|(n, v, _)| (n.as_str(), v.as_str())),
        true,
    );
    let answer = tokio::time::timeout(
        CHECK_TIMEOUT,
        crate::server::query::first_row(co.conn(), sql.as_bytes()),
    )
    .await;
    match answer {
        Ok(Ok(Ok(row))) => {
            co.checkin();
            let mut accepted = pool
                .accepted_params
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if accepted.len() + unchecked.len() > MAX_ACCEPTED {
                accepted.clear();
            }
            for ((name, raw, key), canonical) in unchecked.into_iter().zip(row) {
                let canonical = canonical.unwrap_or(raw);
                params.set(&name, &canonical);
                accepted.insert(key.into(), canonical.into());
            }
            Ok(())
        }
        Ok(Ok(Err(e))) => {
            co.checkin();
            Err(e.into_fatal())
        }
        // The connection is closed (the checkout dropped); the check is skipped.
        Ok(Err(())) | Err(_) => Ok(()),
    }
}
