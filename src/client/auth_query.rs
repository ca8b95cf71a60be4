//! `auth_query`: users that are not in `[[users]]` are looked up in PostgreSQL through a
//! dedicated auth connection (their SCRAM verifier or md5 hash, as in pg_authid), cached for
//! `cache_ttl` (misses too). Such a user gets a pool of its own whose server connections
//! authenticate with the client's own credentials (`config::PassThrough`).

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Secret;
use crate::config::{AuthMethod, AuthQuery, Database, PassThrough, Upstream, User};
use crate::pool::Pool;
use crate::proxy::Shared;

/// The user's credentials, from the cache or the auth query. `None`: no such user (or the
/// lookup failed — logged; the client sees the usual authentication failure).
pub async fn lookup(shared: &Shared, aq: &AuthQuery, name: &str) -> Option<Arc<User>> {
    if let Some(e) = shared.auth_cache.get(name) {
        if e.0.elapsed() < aq.cache_ttl {
            return e.1.clone();
        }
    }
    let found = match fetch(aq, name).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(user = %name, error = %e, "auth_query failed");
            return None;
        }
    };
    let user = found.map(|secret| {
        let auth = match &secret {
            Secret::Scram(_) => AuthMethod::ScramSha256,
            Secret::Md5 { .. } => AuthMethod::Md5,
            Secret::Plain(_) => AuthMethod::ScramSha256,
        };
        Arc::new(User {
            name: name.to_string(),
            secret: Some(secret),
            auth,
        })
    });
    if shared.auth_cache.len() > 100_000 {
        shared.auth_cache.clear();
    }
    shared
        .auth_cache
        .insert(name.to_string(), (Instant::now(), user.clone()));
    user
}

async fn fetch(aq: &AuthQuery, name: &str) -> Result<Option<Secret>, String> {
    let name = name.to_string();
    let query = aq.query.clone();
    let row = crate::control::with_client(&aq.upstream, "auth_query", |c| async move {
        c.query_opt(&query, &[&name]).await
    })
    .await;
    let Some(row) = row? else {
        return Ok(None);
    };
    let secret: Option<String> = row
        .try_get(1)
        .map_err(|e| format!("auth_query result: {e}"))?;
    match secret {
        None => Ok(None),
        Some(s) => Secret::parse(&s)
            .map(Some)
            .map_err(|e| format!("auth_query secret: {e}")),
    }
}

/// The pool for an auth_query user in `db`, created (or replaced when the user's credentials
/// changed) on demand.
pub fn user_pool(
    shared: &Shared,
    db: &Arc<Database>,
    user: &User,
    client_key: Option<[u8; 32]>,
) -> Option<Arc<Pool>> {
    let (password, pass_through) = match (user.secret.as_ref()?, client_key) {
        (Secret::Scram(v), Some(k)) => (
            None,
            Some(PassThrough::Scram {
                client_key: k,
                verifier: v.clone(),
            }),
        ),
        (Secret::Md5 { hash }, _) => (None, Some(PassThrough::Md5 { hash: *hash })),
        (Secret::Plain(p), _) => (Some(p.clone()), None),
        (Secret::Scram(_), None) => return None,
    };
    let key = format!("{}\u{0}{}", db.name, user.name);
    let upstream = Upstream {
        user: user.name.clone(),
        password,
        pass_through,
        ..db.upstream.clone()
    };
    if let Some(p) = shared.pools.get(&key) {
        if format!("{:?}{:?}", p.db.upstream, p.db.pool) == format!("{:?}{:?}", upstream, db.pool) {
            return Some(p.clone());
        }
    }
    let pool = Pool::with_key(
        Arc::new(Database {
            name: db.name.clone(),
            upstream,
            pool: db.pool.clone(),
            tenant_required: db.tenant_required,
            role_check: db.role_check,
            tenant_defaults: db.tenant_defaults,
        }),
        key.clone(),
    );
    crate::pool::maintain::spawn(pool.clone());
    if let Some(old) = shared.pools.insert(key, pool.clone()) {
        old.close();
    }
    Some(pool)
}
