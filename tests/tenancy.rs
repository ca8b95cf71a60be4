//! Tenancy guarantees T1–T4 with real clients, many clients over few server connections.

mod common;

use std::time::Duration;

use common::*;

fn tenant_opts(size: usize) -> Opts {
    Opts {
        size,
        extra: TENANTS.to_string(),
        ..Opts::default()
    }
}

/// search_path, app.tenant_id, current_user and the unqualified table, in one row.
const PROBE: &str = "SELECT current_setting('search_path') || '|' || current_setting('app.tenant_id', true) || '|' || current_user || '|' || (SELECT string_agg(name, ',' ORDER BY id) FROM items)";

fn expected(tenant: &str) -> String {
    match tenant {
        "acme" => "acme, public|acme|pgward|acme-one,acme-two".into(),
        "globex" => "globex, public|globex|tenant_globex|globex-one".into(),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_path_gets_the_tenant_context() {
    let h = Harness::start(tenant_opts(2)).await;
    for tenant in ["acme", "globex"] {
        let want = expected(tenant);
        // database alias, user suffix
        let a = h.connect("app_user", tenant).await;
        let b = h.connect(&format!("app_user.{tenant}"), "app").await;
        for c in [&a, &b] {
            // simple, single statement
            assert_eq!(scalar(c, PROBE).await, want);
            // simple, multi-statement
            let rows = c.simple_query(&format!("SELECT 1; {PROBE}")).await.unwrap();
            let vals: Vec<String> = rows
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap().to_string())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(vals, vec!["1".to_string(), want.clone()]);
            // explicit transaction, simple protocol
            c.batch_execute("BEGIN").await.unwrap();
            assert_eq!(scalar(c, PROBE).await, want);
            assert_eq!(scalar(c, PROBE).await, want);
            c.batch_execute("COMMIT").await.unwrap();
            // extended protocol (named statements), implicit and explicit transactions
            let row = c.query_one(PROBE, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), want);
            let row = c
                .query_one(
                    "SELECT $1::text || current_setting('app.tenant_id', true)",
                    &[&"t="],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), format!("t={tenant}"));
            // pipelined: several extended queries in flight at once
            let s = c.prepare(PROBE).await.unwrap();
            let (r1, r2, r3) = tokio::join!(
                c.query_one(&s, &[]),
                c.query_one(&s, &[]),
                c.query_one(&s, &[])
            );
            for r in [r1, r2, r3] {
                assert_eq!(r.unwrap().get::<_, String>(0), want);
            }
            // RLS on the shared table
            let n = scalar(c, "SELECT count(*) FROM orders").await;
            assert_eq!(n, "1");
            // COPY out
            let stream = c
                .copy_out("COPY (SELECT current_setting('app.tenant_id') || '|' || (SELECT count(*) FROM items)) TO STDOUT")
                .await
                .unwrap();
            futures_util::pin_mut!(stream);
            let mut out = Vec::new();
            while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                out.extend_from_slice(&chunk.unwrap());
            }
            let n_items = if tenant == "acme" { 2 } else { 1 };
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("{tenant}|{n_items}\n")
            );
        }
        let mut tx_client = h.connect("app_user", tenant).await;
        let tx = tx_client.transaction().await.unwrap();
        assert_eq!(
            tx.query_one(PROBE, &[]).await.unwrap().get::<_, String>(0),
            want
        );
        assert_eq!(
            tx.query_one(PROBE, &[]).await.unwrap().get::<_, String>(0),
            want
        );
        tx.commit().await.unwrap();
    }
    // startup option, with psql
    let url = format!(
        "postgres://app_user:{PASSWORD}@127.0.0.1:{}/app?sslmode=disable&options=-c%20pgward.tenant%3Dacme",
        h.port()
    );
    let out = std::process::Command::new(h.pg.bin_dir().join("psql"))
        .args([url.as_str(), "-X", "-A", "-t", "-c", PROBE])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected("acme"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_ends_with_the_transaction() {
    // One server connection: a plain client after a tenant client sees the defaults.
    let h = Harness::start(tenant_opts(1)).await;
    let t = h.connect("app_user", "globex").await;
    assert_eq!(scalar(&t, PROBE).await, expected("globex"));
    t.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    let plain = h.connect("app_user", "app").await;
    assert_eq!(
        scalar(&plain, "SELECT current_setting('search_path') || '|' || coalesce(current_setting('app.tenant_id', true), '') || '|' || current_user").await,
        "\"$user\", public||pgward"
    );
    // the same again after an extended-protocol tenant transaction
    t.query_one(PROBE, &[]).await.unwrap();
    let row = plain
        .query_one(
            "SELECT current_setting('search_path') || '|' || current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "\"$user\", public|pgward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_open_transactions_are_not_broken_by_injection() {
    let h = Harness::start(tenant_opts(2)).await;
    let c = h.connect("app_user", "acme").await;
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    let e = c.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(scalar(&c, PROBE).await, expected("acme"));
    // a multi-statement Query that commits part-way keeps the context after the COMMIT
    let rows = c
        .simple_query("BEGIN; SELECT 1; COMMIT; SELECT current_setting('app.tenant_id') || '|' || current_setting('search_path')")
        .await
        .unwrap();
    let last = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
            _ => None,
        })
        .last()
        .unwrap();
    assert_eq!(last, "acme|acme, public");
    // error positions still point into the client's own text
    let e = c
        .simple_query("SELECT nosuchcolumn FROM items")
        .await
        .unwrap_err();
    let pos = match e.as_db_error().unwrap().position() {
        Some(tokio_postgres::error::ErrorPosition::Original(p)) => *p,
        other => panic!("{other:?}"),
    };
    assert_eq!(pos, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_outside_transaction_blocks_work_for_tenants() {
    let h = Harness::start(tenant_opts(1)).await;
    let c = h.connect("app_user", "acme").await;
    c.batch_execute("VACUUM items").await.unwrap();
    c.batch_execute("CREATE INDEX CONCURRENTLY items_name_idx ON items (name)")
        .await
        .unwrap();
    let direct = h.connect_direct().await;
    assert_eq!(
        scalar(&direct, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'acme' AND indexname = 'items_name_idx'").await,
        "1"
    );
    c.batch_execute("DROP INDEX CONCURRENTLY items_name_idx")
        .await
        .unwrap();
    // the session-level context was reset afterwards
    tokio::time::sleep(Duration::from_millis(100)).await;
    let plain = h.connect("app_user", "app").await;
    assert_eq!(
        scalar(&plain, "SELECT current_setting('search_path')").await,
        "\"$user\", public"
    );
    assert_eq!(scalar(&c, PROBE).await, expected("acme"));
}

/// T2: after a client leaves session state behind, fresh clients on the same (single)
/// server connection see none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_crosses_clients() {
    let h = Harness::start(tenant_opts(1)).await;
    let cases: &[(&str, &str, &str)] = &[
        // (setup by client A, probe by client B, expected probe result)
        (
            "SET statement_timeout = '1234ms'",
            "SHOW statement_timeout",
            "0",
        ),
        (
            "SET app.custom = 'leak'",
            "SELECT coalesce(current_setting('app.custom', true), '')",
            "",
        ),
        (
            "SELECT set_config('work_mem', '7MB', false)",
            "SHOW work_mem",
            "4MB",
        ),
        (
            "PREPARE leak_stmt AS SELECT 1",
            "SELECT count(*) FROM pg_prepared_statements WHERE name = 'leak_stmt'",
            "0",
        ),
        (
            "CREATE TEMP TABLE leak_tmp (x int)",
            "SELECT count(*) FROM pg_class WHERE relname = 'leak_tmp'",
            "0",
        ),
        (
            "BEGIN; DECLARE leak_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            "SELECT count(*) FROM pg_cursors WHERE name = 'leak_cur'",
            "0",
        ),
        (
            "LISTEN leak_channel",
            "SELECT count(*) FROM pg_listening_channels()",
            "0",
        ),
        (
            "SELECT pg_advisory_lock(4242)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
            "0",
        ),
        (
            "DO $$BEGIN PERFORM set_config('work_mem', '9MB', false); END$$",
            "SHOW work_mem",
            "4MB",
        ),
    ];
    for (setup, probe, want) in cases {
        for (a_db, b_db) in [("acme", "globex"), ("acme", "acme"), ("app", "app")] {
            let a = h.connect("app_user", a_db).await;
            a.batch_execute(setup)
                .await
                .unwrap_or_else(|e| panic!("{setup}: {e}"));
            drop(a);
            let b = h.connect("app_user", b_db).await;
            let got = scalar(&b, probe).await;
            assert_eq!(
                &got, want,
                "after `{setup}` by a {a_db} client, a {b_db} client saw it"
            );
        }
    }
    // a plain client's SET ROLE does not reach the next client
    let a = h.connect("app_user", "app").await;
    a.batch_execute("SET ROLE tenant_acme").await.unwrap();
    drop(a);
    let b = h.connect("app_user", "app").await;
    assert_eq!(scalar(&b, "SELECT current_user").await, "pgward");
    // advisory lock taken by A can be taken by B
    let a = h.connect("app_user", "acme").await;
    a.batch_execute("SELECT pg_advisory_lock(77)")
        .await
        .unwrap();
    let b = h.connect("app_user", "globex").await;
    // (A still connected: its lock was released when its server connection was reset)
    assert_eq!(scalar(&b, "SELECT pg_try_advisory_lock(77)").await, "t");
}

/// T2 for statements prepared once and executed later (drivers' named statements): each
/// execution's session effects are reset, whichever transaction it runs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_executed_later_leave_no_session_state() {
    let h = Harness::start(tenant_opts(1)).await;
    for (a_db, b_db) in [("acme", "globex"), ("app", "app")] {
        let a = h.connect("app_user", a_db).await;
        // prepare() is one transaction (Parse, Describe, Sync); each execution is another
        let set = a
            .prepare("SELECT set_config('work_mem', $1, false)")
            .await
            .unwrap();
        let lock = a.prepare("SELECT pg_advisory_lock($1)").await.unwrap();
        for _ in 0..2 {
            a.query(&set, &[&"7MB"]).await.unwrap();
            a.query(&lock, &[&4343i64]).await.unwrap();
        }
        // unnamed statements bound once per Parse (query_typed) take the same path
        a.query_typed(
            "SELECT set_config('statement_timeout', $1, false)",
            &[(&"1234", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
        // A stays connected; B gets the same (only) server connection
        let b = h.connect("app_user", b_db).await;
        assert_eq!(scalar(&b, "SHOW work_mem").await, "4MB", "{a_db} -> {b_db}");
        assert_eq!(
            scalar(&b, "SHOW statement_timeout").await,
            "0",
            "{a_db} -> {b_db}"
        );
        assert_eq!(
            scalar(
                &b,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343"
            )
            .await,
            "0",
            "{a_db} -> {b_db}"
        );
    }
}

/// Startup parameters (`options=-c …`) are applied as PostgreSQL applies them (a list stays a
/// list); an invalid one refuses the login as PostgreSQL's FATAL would (or, when no server
/// connection is free at login, fails the client's first statement) and leaves nothing on the
/// pool; and a tenant may not set its context's settings through them (T3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_are_applied_checked_and_guarded() {
    let h = Harness::start(tenant_opts(1)).await;
    let with = |db: &str, opts: &str| {
        let enc = opts.replace(' ', "%20").replace('=', "%3D");
        format!("{}&options={enc}", h.url("app_user", db))
    };
    // Checked at login, as PostgreSQL refuses them: a bad value, an unknown name.
    for (opts, code, names) in [
        ("-c statement_timeout=bogus", "22023", "statement_timeout"),
        ("-c no_such_setting=1", "42704", "no_such_setting"),
        ("-c work_mem=1MB -c lock_timeout=x", "22023", "lock_timeout"),
    ] {
        let e = connect(&with("app", opts))
            .await
            .err()
            .unwrap_or_else(|| panic!("{opts} accepted at login"));
        assert_eq!(sqlstate(&e), code, "{opts}: {e}");
        let db = e.as_db_error().expect("a server error");
        assert_eq!(db.severity(), "FATAL", "{opts}");
        assert!(db.message().contains(names), "{opts}: {e}");
    }
    let c = connect(&with("app", "-c search_path=acme,public"))
        .await
        .unwrap();
    assert_eq!(
        scalar(&c, "SELECT current_schemas(false)::text").await,
        "{acme,public}"
    );
    assert_eq!(
        scalar(&c, "SELECT string_agg(name, ',' ORDER BY id) FROM items").await,
        "acme-one,acme-two"
    );
    drop(c);
    // A leaves its settings on the only server connection; B's invalid value fails B. B logs
    // in while a holder has the only connection, so its login is not checked (a login never
    // waits for the pool): the value fails B's first statement instead.
    let a = connect(&with("app", "-c work_mem=1234kB -c app.custom=a"))
        .await
        .unwrap();
    assert_eq!(scalar(&a, "SHOW work_mem").await, "1234kB");
    a.batch_execute("BEGIN").await.unwrap();
    let b = connect(&with("app", "-c statement_timeout=bogus2"))
        .await
        .expect("not checked at login while the pool is busy");
    a.batch_execute("COMMIT").await.unwrap();
    drop(a);
    let e = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{e}");
    assert!(b.simple_query("SELECT 1").await.is_err(), "B is closed");
    // the next client sees neither A's settings nor B's
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SHOW work_mem").await, "4MB");
    assert_eq!(scalar(&c, "SHOW statement_timeout").await, "0");
    assert_eq!(
        scalar(
            &c,
            "SELECT coalesce(current_setting('app.custom', true), '')"
        )
        .await,
        ""
    );
    // T3 at login
    for opts in [
        "-c app.tenant_id=globex",
        "-c search_path=globex",
        "-c role=tenant_globex",
    ] {
        let e = connect(&with("acme", opts))
            .await
            .err()
            .unwrap_or_else(|| panic!("{opts} accepted"));
        assert_eq!(sqlstate(&e), "42501", "{opts}: {e}");
    }
    // other startup parameters are still fine for tenants
    let t = connect(&with("acme", "-c work_mem=2MB")).await.unwrap();
    assert_eq!(scalar(&t, "SHOW work_mem").await, "2MB");
    assert_eq!(
        scalar(&t, "SELECT current_setting('app.tenant_id')").await,
        "acme"
    );
}

/// T1 for a Query that ends the transaction and goes on (`…; COMMIT; SELECT …`): sent from
/// outside a transaction, the context covers all of it; sent inside one, where nothing can be
/// sent between the end and what follows, a tenant's such Query is refused (0A000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_ends_the_transaction_and_goes_on() {
    let h = Harness::start(tenant_opts(1)).await;
    let last_row = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .last()
            .expect("a row")
    };
    let c = h.connect("app_user", "acme").await;
    for sql in [
        format!("BEGIN; SELECT 1; COMMIT; {PROBE}"),
        format!("SELECT 1; ROLLBACK; {PROBE}"),
    ] {
        let rows = c.simple_query(&sql).await.unwrap();
        assert_eq!(last_row(rows), expected("acme"), "{sql}");
    }
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .simple_query(&format!("COMMIT; {PROBE}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // ending the transaction last is fine
    c.batch_execute("BEGIN").await.unwrap();
    let rows = c.simple_query(&format!("{PROBE}; COMMIT")).await.unwrap();
    assert_eq!(last_row(rows), expected("acme"));
    assert_eq!(scalar(&c, PROBE).await, expected("acme"));
    // clients without a tenant context are not affected
    let p = h.connect("app_user", "app").await;
    p.batch_execute("BEGIN").await.unwrap();
    let rows = p.simple_query("COMMIT; SELECT 7").await.unwrap();
    assert_eq!(last_row(rows), "7");
}

/// T3: protected settings cannot be changed by a tenant; look-alikes are not rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rejects_context_changes_and_nothing_else() {
    let h = Harness::start(tenant_opts(2)).await;
    let c = h.connect("app_user", "acme").await;
    let rejected = [
        "SET search_path TO globex",
        "set SEARCH_PATH = globex, public",
        "SET LOCAL search_path TO globex",
        "RESET search_path",
        "SET \"app\".\"tenant_id\" = 'globex'",
        "SET app.tenant_id TO 'globex'",
        "SELECT set_config('app.tenant_id', 'globex', false)",
        "SELECT pg_catalog.set_config('search_path', 'globex', true)",
        "/* hi */ SET ROLE tenant_globex",
        "SET SESSION AUTHORIZATION postgres",
        "RESET ALL; SELECT current_setting('search_path')",
        "BEGIN; RESET ALL",
        "DISCARD ALL; SELECT 1",
        "SELECT 1; SET search_path = globex",
        "SET SCHEMA 'globex'",
    ];
    for sql in rejected {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
        assert_eq!(scalar(&c, PROBE).await, expected("acme"), "after {sql}");
    }
    // extended protocol
    let e = c
        .query("SELECT set_config('search_path', $1, false)", &[&"globex"])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // inside a transaction the rejection aborts it like any error
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.simple_query("SET search_path = globex").await.is_err());
    assert_eq!(
        sqlstate(&c.simple_query("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    let allowed = [
        "SELECT 'SET search_path TO globex'",
        "SELECT $$RESET ALL$$",
        "SELECT 1 -- SET ROLE tenant_globex",
        "SELECT 1 /* set_config('search_path', 'x', false) */",
        "SET statement_timeout = '5s'",
        "SET LOCAL work_mem = '8MB'",
        "SELECT current_setting('search_path')",
    ];
    for sql in allowed {
        c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(scalar(&c, PROBE).await, expected("acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenants_and_foreign_users_are_refused() {
    let extra = format!("{TENANTS}\n[[users]]\nname = \"t1_user\"\npassword = \"{PASSWORD}\"\n\n[[tenants]]\nid = \"t1\"\ndatabase = \"app\"\nsearch_path = [\"acme\"]\nusers = [\"t1_user\"]\n");
    let h = Harness::start(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let e = connect(&h.url("app_user.nosuch", "app")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    assert!(e.as_db_error().unwrap().message().contains("nosuch"));
    let e = connect(&h.url("app_user", "t1")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    // md5 authentication with the tenant chosen by user-name suffix
    let m = h.connect("md5_user.acme", "app").await;
    assert_eq!(
        scalar(&m, "SELECT current_setting('app.tenant_id')").await,
        "acme"
    );
    let ok = h.connect("t1_user", "t1").await;
    assert_eq!(
        scalar(&ok, "SELECT current_setting('search_path')").await,
        "acme"
    );
}

/// Tenants from a SQL table: added and removed without restarting pgward; a failed refresh
/// keeps the last good set. Also tenants added to the file by RELOAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_registry_refresh_adds_and_removes_tenants() {
    let pg_url_placeholder = "postgres://nobody@127.0.0.1:1/none?sslmode=disable";
    let h = Harness::start(Opts {
        extra: format!(
            "{TENANTS}\n[tenant_query]\nupstream = \"{pg_url_placeholder}\"\nrefresh = \"300ms\"\n"
        ),
        ..Opts::default()
    })
    .await;
    // point tenant_query at the test's PostgreSQL (port known only now) and reload
    let direct = h.connect_direct().await;
    direct
        .batch_execute("CREATE TABLE pgward_tenants (id text, database text, search_path text, settings text, role text, users text)")
        .await
        .unwrap();
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace(pg_url_placeholder, &h.direct_url("app"));
    std::fs::write(&h.config_path, text).unwrap();
    let (ok, _, err) = tokio::task::block_in_place(|| h.psql("admin", "pgward", &["-c", "RELOAD"]));
    assert!(ok, "{err}");
    assert!(connect(&h.url("app_user", "t9")).await.is_err());
    direct
        .batch_execute(r#"INSERT INTO pgward_tenants VALUES ('t9', 'app', 'globex,public', '{"app.tenant_id": "t9"}', NULL, NULL)"#)
        .await
        .unwrap();
    let mut c = None;
    for _ in 0..30 {
        if let Ok(cl) = connect(&h.url("app_user", "t9")).await {
            c = Some(cl);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = c.expect("tenant t9 appeared");
    assert_eq!(
        scalar(
            &c,
            "SELECT current_setting('search_path') || '|' || current_setting('app.tenant_id')"
        )
        .await,
        "globex, public|t9"
    );
    // a broken control query keeps the last good set
    direct
        .batch_execute("ALTER TABLE pgward_tenants RENAME TO pgward_tenants_gone")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        connect(&h.url("app_user", "t9")).await.is_ok(),
        "last good set kept"
    );
    direct
        .batch_execute(
            "ALTER TABLE pgward_tenants_gone RENAME TO pgward_tenants; DELETE FROM pgward_tenants",
        )
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..30 {
        if connect(&h.url("app_user", "t9")).await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "tenant t9 removed");
    // the existing client keeps working with its context
    assert_eq!(
        scalar(&c, "SELECT current_setting('app.tenant_id')").await,
        "t9"
    );
    // file tenants still there
    let a = h.connect("app_user", "acme").await;
    assert_eq!(
        scalar(&a, "SELECT current_setting('app.tenant_id')").await,
        "acme"
    );
}
