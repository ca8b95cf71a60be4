//! Every wait bounded, every failure reported once and as PostgreSQL would: a frozen server
//! (SIGSTOP of its processes) with query_timeout and the readiness probe firing, a client idle
//! in a transaction, PostgreSQL down (attempts bounded by server_login_retry), the refusals
//! psql reads, a transaction cut by a lost server connection answered like a failed one (the
//! client stays; one FATAL in session mode), a Terminate before the startup
//! packet, silent sockets that do not keep clients out, and the ParameterStatus values a
//! direct connection reports.

mod common;

use std::time::{Duration, Instant};

use common::wire::{fe, Read, Wire};
use common::*;

/// SIGSTOP every process of the test's PostgreSQL; SIGCONT on drop, whatever happens.
struct Frozen(Vec<String>);

impl Frozen {
    fn freeze(pg: &pgward::pgctl::TempPostgres) -> Frozen {
        let pidfile = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
        let postmaster = pidfile.lines().next().unwrap().trim().to_string();
        let children = std::process::Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        pids.push(postmaster);
        let ok = std::process::Command::new("kill")
            .arg("-STOP")
            .args(&pids)
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGSTOP {pids:?}");
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(&self.0)
            .status();
    }
}

fn ready(h: &Harness) -> (u16, String) {
    tokio::task::block_in_place(|| http_get(h.proxy.http_addr.unwrap(), "/ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_bounded_and_reported() {
    let h = Harness::start(Opts {
        size: 2,
        pool_extra: "query_timeout = \"2s\"\nready_probe_timeout = \"1s\"".into(),
        ..Opts::default()
    })
    .await;
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
    // /ready: a probe has answered by now
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&h).0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {:?}", ready(&h));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let frozen = Frozen::freeze(&h.pg);
    let started = Instant::now();
    // a statement in flight on a frozen server: query_timeout, one FATAL, within bounds
    let e = tokio::time::timeout(Duration::from_secs(10), c.simple_query("SELECT 2"))
        .await
        .expect("query_timeout did not bound the statement")
        .expect_err("a frozen server cannot answer");
    let took = started.elapsed();
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // /ready turns 503 with a reason within the probe's bounds
    let mut status = ready(&h);
    while status.0 != 503 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/ready still {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = ready(&h);
    }
    assert!(status.1.contains("database app"), "{status:?}");
    drop(frozen);
    // back: /ready recovers, a new client is served
    let back = Instant::now();
    while ready(&h).0 != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "/ready did not recover: {:?}",
            ready(&h)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c2 = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c2, "SELECT 3").await, "3");
    let metrics =
        tokio::task::block_in_place(|| http_get(h.proxy.http_addr.unwrap(), "/metrics").1);
    assert!(
        metrics.contains("pgward_timeouts_total{kind=\"query\"}"),
        "timeouts counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_idle_in_a_transaction_is_disconnected() {
    let h = Harness::start(Opts {
        size: 1,
        pool_extra: "idle_transaction_timeout = \"1s\"".into(),
        ..Opts::default()
    })
    .await;
    let mut w = Wire::tcp(h.port(), "md5_user", "app", PASSWORD)
        .await
        .unwrap();
    w.send(&fe::query("BEGIN")).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    loop {
        match w.read(Duration::from_secs(5)).await {
            Read::Msg(t, b) => got.push((t, b)),
            Read::Eof => break,
            Read::Timeout => panic!("idle_transaction_timeout did not fire: {got:?}"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let errors: Vec<_> = got.iter().filter(|(t, _)| *t == b'E').collect();
    assert_eq!(errors.len(), 1, "exactly one FATAL: {got:?}");
    assert!(
        common::wire::error_text(&errors[0].1).contains("FATAL 25P03"),
        "{got:?}"
    );
    // the server connection was rolled back and reused: the next client is served at once
    let c = h.connect("app_user", "app").await;
    assert_eq!(scalar(&c, "SELECT 1").await, "1");
}

/// An upstream that accepts connections and closes them at once, counting attempts.
async fn closing_upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    (port, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_is_not_hammered_and_clients_fail_fast() {
    let (port, attempts) = closing_upstream().await;
    let h = Harness::start(Opts {
        size: 5,
        pool_extra: "server_login_retry = \"1s\"".into(),
        extra: format!(
            "\n[[databases]]\nname = \"down\"\nupstream = \"postgres://pgward:x@127.0.0.1:{port}/app?sslmode=disable\"\n"
        ),
        ..Opts::default()
    })
    .await;
    let started = Instant::now();
    let mut refused = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        match connect(&h.url("app_user", "down")).await {
            Ok(_) => panic!("a client of a down server was served"),
            Err(e) => {
                assert_eq!(sqlstate(&e), "08006", "{e:?}");
                refused += 1;
            }
        }
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 50, "clients tried: {refused}");
    // one attempt per server_login_retry (plus the readiness probe's, which shares it)
    assert!(
        n <= 6,
        "{n} connection attempts in 3 s for {refused} clients"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a client waited {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_read_as_postgresql_would_and_silent_sockets_keep_nobody_out() {
    let h = Harness::start(Opts {
        max_clients: 2,
        top_extra: "client_login_timeout = \"2s\"".into(),
        ..Opts::default()
    })
    .await;
    // a Terminate before any startup packet: closed without a word, as PostgreSQL does
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", h.port()))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(&fe::terminate()).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .expect("closed")
        .unwrap();
    assert_eq!(n, 0, "nothing sent back: {buf:?}");
    // 200 sockets that never send a startup packet do not count as clients
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", h.port()))
                .await
                .unwrap(),
        );
    }
    let a = h.connect("app_user", "app").await;
    let b = h.connect("app_user", "app").await;
    // at the limit: psql (sslmode=prefer by default) reads pgward's message
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(h.pg.bin_dir().join("psql"))
            .arg(format!(
                "postgres://app_user:{PASSWORD}@127.0.0.1:{}/app",
                h.port()
            ))
            .args(["-X", "-c", "SELECT 1"])
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("too many client connections"),
        "psql should show the reason: {stderr}"
    );
    assert_eq!(scalar(&a, "SELECT 1").await, "1");
    drop((a, b, silent));
}

/// Where a scripted sequence loses its server connection.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    No,
    /// Idle in the transaction: the backend is terminated before this step is sent.
    Before,
    /// While this step's statement runs (the proxied one sleeps, the oracle's fails).
    During,
}

/// One step: what is sent through pgward, what is sent directly to PostgreSQL (the oracle:
/// the lost server replaced by a statement that fails there), and where the cut is.
struct Step {
    proxied: Vec<Vec<u8>>,
    direct: Vec<Vec<u8>>,
    cut: Cut,
}

fn same(msgs: Vec<Vec<u8>>) -> Step {
    Step {
        proxied: msgs.clone(),
        direct: msgs,
        cut: Cut::No,
    }
}

fn extended(sql: &str) -> Vec<Vec<u8>> {
    vec![
        fe::parse("", sql),
        fe::bind("", ""),
        fe::describe(b'P', ""),
        fe::execute("", 0),
        fe::sync(),
    ]
}

/// Runs until pgward's server is terminated; the oracle's is canceled by its
/// statement_timeout at the same point (after its RowDescription).
const RUNS: &str = "SELECT pg_sleep(5)";

const PROBE: &str =
    "SELECT current_setting('app.tenant_id'), current_user, current_setting('search_path')";

/// Send each step, kill pgward's backend at the cut, and return every answer in a
/// comparable form (ParameterStatus and notices left out).
async fn transcript(
    w: &mut Wire,
    steps: &[Step],
    proxied: bool,
    killer: Option<&tokio_postgres::Client>,
) -> Vec<String> {
    const KILL: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgward' AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let mut out = Vec::new();
    for step in steps {
        let msgs = if proxied { &step.proxied } else { &step.direct };
        if proxied && step.cut == Cut::Before {
            killer.unwrap().simple_query(KILL).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        w.send(&msgs.concat()).await.unwrap();
        if proxied && step.cut == Cut::During {
            tokio::time::sleep(Duration::from_millis(300)).await;
            killer.unwrap().simple_query(KILL).await.unwrap();
        }
        let mut owed = msgs.iter().filter(|m| matches!(m[0], b'Q' | b'S')).count();
        while owed > 0 {
            match w.read(Duration::from_secs(10)).await {
                Read::Msg(b'S' | b'N', _) => {}
                Read::Msg(b'Z', b) => {
                    owed -= 1;
                    out.push(format!("Z{}", b[0] as char));
                }
                Read::Msg(b'E', b) => {
                    let f = common::wire::fields(&b);
                    let get = |c: u8| {
                        f.iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    out.push(format!("E{} {}", get(b'V'), get(b'C')));
                }
                Read::Msg(b'C', b) => {
                    out.push(format!("C{}", String::from_utf8_lossy(&b[..b.len() - 1])))
                }
                Read::Msg(b'D', b) => out.push(format!("D{:?}", common::wire::data_row(&b))),
                Read::Msg(t, _) => out.push((t as char).to_string()),
                Read::Eof => panic!("connection closed; so far {out:?}"),
                Read::Timeout => panic!("no answer; so far {out:?}"),
            }
        }
        out.push("|".into());
    }
    out
}

/// A transaction-mode client whose server connection dies mid-transaction stays connected:
/// it is told once and then answered as PostgreSQL answers a failed transaction; its next
/// transaction runs on a new server connection with its tenant context (T1). Each sequence is
/// compared with what PostgreSQL itself answers when the same step fails, the first error's
/// SQLSTATE aside (08006 through pgward: its server connection failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_by_a_lost_server_is_answered_like_a_failed_one() {
    let h = Harness::start(Opts {
        size: 1,
        extra: TENANTS.to_string(),
        ..Opts::default()
    })
    .await;
    let q = |s: &str| vec![fe::query(s)];
    let cut = |cut: Cut, proxied: Vec<Vec<u8>>, direct: Vec<Vec<u8>>| Step {
        proxied,
        direct,
        cut,
    };
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "idle in a block, then statements, then COMMIT",
            vec![
                same(q("BEGIN")),
                cut(Cut::Before, q("SELECT 2"), q("SELECT 1/0")),
                same(q("SELECT 3")),
                // PostgreSQL closes in a failed block too.
                same(vec![fe::close(b'S', "s1"), fe::sync()]),
                same(q("COMMIT")),
                same(q(PROBE)),
            ],
        ),
        (
            "a statement running in a block, pipelined with another",
            vec![
                same(q("BEGIN")),
                cut(
                    Cut::During,
                    [fe::query(RUNS), fe::query("SELECT 3")].to_vec(),
                    [fe::query(RUNS), fe::query("SELECT 3")].to_vec(),
                ),
                same(q("SELECT 4")),
                same(q("ROLLBACK")),
                same(q(PROBE)),
            ],
        ),
        (
            "an autocommit statement running",
            vec![cut(Cut::During, q(RUNS), q(RUNS)), same(q(PROBE))],
        ),
        (
            "extended protocol, idle in a block, then COMMIT by extended protocol",
            vec![
                same(q("BEGIN")),
                cut(
                    Cut::Before,
                    extended("SELECT 2"),
                    extended("SELECT * FROM no_such_table"),
                ),
                same(extended("SELECT 3")),
                same(extended("COMMIT")),
                same(extended(PROBE)),
            ],
        ),
        (
            "extended protocol, a statement running outside a block",
            vec![
                cut(Cut::During, extended(RUNS), extended(RUNS)),
                same(extended(PROBE)),
            ],
        ),
        (
            "a COMMIT running: no block is left after it",
            vec![
                same(q("BEGIN")),
                same(q("INSERT INTO slow_commit VALUES (1)")),
                cut(Cut::During, q("COMMIT"), q("COMMIT")),
                same(q(PROBE)),
            ],
        ),
        (
            "an extended-protocol COMMIT running",
            vec![
                same(q("BEGIN")),
                same(q("INSERT INTO slow_commit VALUES (1)")),
                cut(Cut::During, extended("COMMIT"), extended("COMMIT")),
                same(extended(PROBE)),
            ],
        ),
        (
            "a failed block ended by a described extended-protocol COMMIT",
            vec![
                same(q("BEGIN")),
                cut(Cut::Before, q("SELECT 2"), q("SELECT 1/0")),
                same(vec![
                    fe::parse("", "COMMIT"),
                    fe::describe(b'S', ""),
                    fe::bind("", ""),
                    fe::execute("", 0),
                    fe::sync(),
                ]),
                same(q(PROBE)),
            ],
        ),
        (
            "idle in a block, then ROLLBACK",
            vec![
                same(q("BEGIN")),
                cut(Cut::Before, q("ROLLBACK"), q("ROLLBACK")),
                same(q(PROBE)),
            ],
        ),
    ];
    let killer = h.connect_direct().await;
    // A COMMIT that takes time (so the loss can cut it) through pgward, and fails in the oracle.
    killer
        .batch_execute(
            "CREATE TABLE public.slow_commit (x int);
             CREATE FUNCTION public.at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF current_setting('app.commit_fails', true) = 'yes' THEN
                 RAISE EXCEPTION 'commit fails' USING ERRCODE = '40001';
               END IF;
               PERFORM pg_sleep(5);
               RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON public.slow_commit
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.at_commit();
             GRANT ALL ON public.slow_commit TO tenant_globex;",
        )
        .await
        .unwrap();
    for (name, steps) in &scripts {
        let mut direct = Wire::unix(h.pg.socket_dir(), h.pg.port(), "pgward", "app")
            .await
            .unwrap();
        for sql in [
            "SET ROLE tenant_globex",
            "SET app.tenant_id = 'globex'",
            "SET search_path = globex, public",
            "SET statement_timeout = '300ms'",
            "SET app.commit_fails = 'yes'",
        ] {
            transcript(&mut direct, &[same(q(sql))], false, None).await;
        }
        let mut expected = transcript(&mut direct, steps, false, None).await;
        drop(direct);
        let mut w = Wire::tcp(h.port(), "app_user", "globex", PASSWORD)
            .await
            .unwrap();
        let mut got = transcript(&mut w, steps, true, Some(&killer)).await;
        // The one error that tells the client is pgward's (the server's SQLSTATE, as ERROR);
        // a ROLLBACK needs no telling.
        if let Some(oracle_first) = expected.iter().position(|m| m.starts_with('E')) {
            let first = got
                .iter()
                .position(|m| m.starts_with('E'))
                .unwrap_or_else(|| panic!("{name}: the client was not told: {got:?}"));
            assert_eq!(got[first], "EERROR 08006", "{name}: {got:?}");
            got[first] = "E*".into();
            expected[oracle_first] = "E*".into();
        }
        assert_eq!(got, expected, "{name}");
        assert!(
            got.iter()
                .filter(|m| m.starts_with('E') && m.ends_with("08006"))
                .count()
                == 0,
            "{name}: told once: {got:?}"
        );
        assert!(
            got.iter()
                .any(|m| m.contains("globex") && m.contains("tenant_globex")),
            "{name}: the next transaction has the tenant's context: {got:?}"
        );
    }

    // A COMMIT sent before the client heard of the loss fails; nothing was committed.
    let mut w = Wire::tcp(h.port(), "app_user", "globex", PASSWORD)
        .await
        .unwrap();
    let got = transcript(
        &mut w,
        &[
            same(q("BEGIN")),
            same(q("INSERT INTO items VALUES (100, 'lost')")),
            cut(Cut::Before, q("COMMIT"), vec![]),
            same(q("SELECT count(*) FROM items WHERE id = 100")),
        ],
        true,
        Some(&killer),
    )
    .await;
    let want = [
        "CBEGIN",
        "ZT",
        "|",
        "CINSERT 0 1",
        "ZT",
        "|",
        "EERROR 08006",
        "ZI",
        "|",
        "T",
        "D[Some(\"0\")]",
        "CSELECT 1",
        "ZI",
        "|",
    ];
    assert_eq!(got, want, "COMMIT of a lost transaction");
}

/// A client whose session lived on the server that died — session mode, or a transaction that
/// left state `session_state = "pin"` keeps — gets one FATAL, PostgreSQL's own, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fatal_when_a_session_on_the_server_dies() {
    for (mode, session_state, sql) in [
        ("session", "reset", "BEGIN"),
        ("transaction", "pin", "BEGIN; CREATE TEMP TABLE t (x int)"),
    ] {
        let h = Harness::start(Opts {
            size: 1,
            mode,
            session_state,
            ..Opts::default()
        })
        .await;
        let mut w = Wire::tcp(h.port(), "md5_user", "app", PASSWORD)
            .await
            .unwrap();
        w.send(&fe::query(sql)).await.unwrap();
        while !matches!(w.read(Duration::from_secs(5)).await, Read::Msg(b'Z', _)) {}
        let direct = h.connect_direct().await;
        direct
            .simple_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'pgward' AND pid <> pg_backend_pid()")
            .await
            .unwrap();
        let mut errors = Vec::new();
        loop {
            match w.read(Duration::from_secs(5)).await {
                Read::Msg(b'E', b) => errors.push(common::wire::error_text(&b)),
                Read::Msg(..) => {}
                Read::Eof => break,
                Read::Timeout => {
                    panic!("{mode}/{session_state}: the client was not told: {errors:?}")
                }
            }
        }
        assert_eq!(
            errors.len(),
            1,
            "{mode}/{session_state}: one error per event: {errors:?}"
        );
        assert!(
            errors[0].contains("FATAL 57P01"),
            "{mode}/{session_state}: PostgreSQL's own: {errors:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_at_login_is_what_postgresql_reports() {
    let h = Harness::start(Opts::default()).await;
    let params = [
        ("client_encoding", "utf8"),
        ("DateStyle", "iso,dmy"),
        ("IntervalStyle", "SQL_STANDARD"),
        ("TimeZone", "europe/rome"),
    ];
    let (_w, direct) = Wire::unix_with(h.pg.socket_dir(), h.pg.port(), "pgward", "app", &params)
        .await
        .unwrap();
    let (_p, proxied) = Wire::tcp_with(h.port(), "md5_user", "app", PASSWORD, &params)
        .await
        .unwrap();
    for name in ["client_encoding", "DateStyle", "IntervalStyle", "TimeZone"] {
        let get = |v: &[(String, String)]| {
            v.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(get(&proxied), get(&direct), "{name}");
    }
}
