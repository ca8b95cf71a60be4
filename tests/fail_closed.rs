//! T5, fail closed: with a `baseline_role`, a statement that reaches PostgreSQL without its
//! context (forced here by a test-only switch that skips every injection) runs as that
//! role and gets a permission error instead of another tenant's rows; without it, the same
//! miss reads them. And the check of the role such statements would run as: warnings for a
//! superuser, BYPASSRLS and a table owner, in SHOW DATABASES and on /ready, and with
//! `role_check = "strict"` tenant clients refused.
//!
//! One test in its own binary: the switch is process-wide.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use pgward::client::context::SKIP_CONTEXT_FOR_TESTS;

const ROLES_SQL: &str = r#"
CREATE ROLE pgward_nobody NOLOGIN;
GRANT pgward_nobody TO pgward;
CREATE ROLE pgward_su LOGIN SUPERUSER PASSWORD 'upstream-pw';
CREATE ROLE pgward_bypass LOGIN BYPASSRLS PASSWORD 'upstream-pw';
GRANT CONNECT ON DATABASE app TO pgward_bypass;
"#;

fn extra(pg_port: u16) -> String {
    let up = |user: &str| {
        format!("postgres://{user}:{UPSTREAM_PASSWORD}@127.0.0.1:{pg_port}/app?sslmode=disable")
    };
    format!(
        r#"{TENANTS}
[[databases]]
name = "safe"
upstream = "{safe}"
baseline_role = "pgward_nobody"

[[databases]]
name = "strict"
upstream = "{safe}"
role_check = "strict"

[[databases]]
name = "su"
upstream = "{su}"

[[databases]]
name = "bypass"
upstream = "{bypass}"

[[tenants]]
id = "safe_globex"
database = "safe"
search_path = ["globex", "public"]
settings = {{ "app.tenant_id" = "globex" }}
role = "tenant_globex"

[[tenants]]
id = "safe_acme"
database = "safe"
search_path = ["acme", "public"]
settings = {{ "app.tenant_id" = "acme" }}

[[tenants]]
id = "strict_acme"
database = "strict"
search_path = ["acme", "public"]

[[tenants]]
id = "su_acme"
database = "su"
search_path = ["acme", "public"]

[[tenants]]
id = "bypass_acme"
database = "bypass"
search_path = ["acme", "public"]
"#,
        safe = up("pgward"),
        su = up("pgward_su"),
        bypass = up("pgward_bypass"),
    )
}

async fn fails_with(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(rows) => format!("ok: {}", first_value(&rows)),
        Err(e) => sqlstate(&e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_context_fails_closed_and_unsafe_login_roles_are_reported() {
    let h = Harness::start(Opts::default()).await;
    h.pg.psql("postgres", ROLES_SQL).expect("roles");
    // Reload with the databases and tenants that use those roles.
    std::fs::write(
        &h.config_path,
        config_text(h.pg.port(), &Opts::default()) + &extra(h.pg.port()),
    )
    .unwrap();
    let cfg = pgward::config::Config::load(&h.config_path).expect("config");
    h.proxy.shared.reload(cfg).expect("reload");

    // With the context in place, everything works as usual on the baseline database.
    let g = h.connect("app_user", "safe_globex").await;
    assert_eq!(
        scalar(
            &g,
            "SELECT current_user || '/' || current_setting('search_path')"
        )
        .await,
        "tenant_globex/globex, public"
    );
    let a = h.connect("app_user", "safe_acme").await;
    assert_eq!(
        scalar(&a, "SELECT current_user").await,
        "pgward",
        "a tenant without a role runs as the login role"
    );
    assert_eq!(scalar(&a, "SELECT count(*) FROM items").await, "2");
    let p = h.connect("app_user", "safe").await;
    assert_eq!(
        scalar(&p, "SELECT current_user").await,
        "pgward",
        "plain clients run as the login role"
    );
    // a plain client's session-level RESET ROLE / DISCARD ALL land on the baseline, not above it
    p.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(scalar(&p, "SELECT current_user").await, "pgward");

    // A deliberate miss: no context is sent at all.
    SKIP_CONTEXT_FOR_TESTS.store(true, Ordering::SeqCst);
    let miss = async {
        let g = h.connect("app_user", "safe_globex").await;
        let leaked_with_baseline = fails_with(&g, "SELECT count(*) FROM acme.items").await;
        let own_with_baseline = fails_with(&g, "SELECT count(*) FROM globex.items").await;
        let who = scalar(&g, "SELECT current_user").await;
        let p = h.connect("app_user", "safe").await;
        let plain = fails_with(&p, "SELECT count(*) FROM acme.items").await;
        // the same miss on the database without a baseline role
        let u = h.connect("app_user", "globex").await;
        let leaked_without = fails_with(&u, "SELECT count(*) FROM acme.items").await;
        (
            leaked_with_baseline,
            own_with_baseline,
            who,
            plain,
            leaked_without,
        )
    }
    .await;
    SKIP_CONTEXT_FOR_TESTS.store(false, Ordering::SeqCst);
    let (leaked_with_baseline, own_with_baseline, who, plain, leaked_without) = miss;
    assert_eq!(
        who, "pgward_nobody",
        "a missed context runs as the baseline role"
    );
    assert_eq!(
        leaked_with_baseline, "42501",
        "another tenant's table: permission error"
    );
    assert_eq!(own_with_baseline, "42501", "even its own tenant's table");
    assert_eq!(plain, "42501", "a plain client's missed context too");
    assert_eq!(
        leaked_without, "ok: 2",
        "without a baseline role the same miss reads another tenant's rows (what T5 prevents)"
    );

    // The role check: findings per database, in SHOW DATABASES and on /ready.
    let admin = h.connect("admin", "pgward").await;
    let mut found = std::collections::HashMap::new();
    for _ in 0..100 {
        found.clear();
        for m in admin.simple_query("SHOW DATABASES").await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                let col = r
                    .columns()
                    .iter()
                    .position(|c| c.name() == "role_check")
                    .unwrap();
                found.insert(
                    r.get(0).unwrap().to_string(),
                    r.get(col).unwrap_or("").to_string(),
                );
            }
        }
        if ["app", "safe", "su", "bypass", "strict"].iter().all(|d| {
            found
                .get(*d)
                .is_some_and(|v| !v.is_empty() && !v.starts_with("unchecked"))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found["safe"].starts_with("ok (role pgward_nobody)"),
        "{found:?}"
    );
    assert!(found["app"].contains("owns 3 table(s)"), "{found:?}");
    assert!(
        found["app"].contains("tenant_globex"),
        "the login role inherits a tenant role: {found:?}"
    );
    assert!(found["su"].contains("superuser"), "{found:?}");
    assert!(found["bypass"].contains("BYPASSRLS"), "{found:?}");
    let (status, body) =
        tokio::task::block_in_place(|| http_get(h.proxy.http_addr.unwrap(), "/ready"));
    assert!(
        body.contains("warning: database su: role pgward_su: is a superuser"),
        "{status} {body}"
    );
    assert!(!body.contains("database safe:"), "{body}");

    // strict: tenant clients refused, plain clients served
    let e = connect(&h.url("app_user", "strict_acme"))
        .await
        .expect_err("a tenant of a strict database with an unsafe login role");
    assert_eq!(sqlstate(&e), "28000", "{e}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("role_check = \"strict\""), "{msg}");
    let p = h.connect("app_user", "strict").await;
    assert_eq!(scalar(&p, "SELECT 1").await, "1");
}
