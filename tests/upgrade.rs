//! Replacing the pgward binary under load (`upgrade_socket`): pgbench (simple and prepared
//! protocol, plain and tenant clients) and a psycopg loop run while a second pgward process
//! takes over from the first and a third from the second. No transaction fails, no
//! connection is refused, the old processes exit by themselves, and the persistent psycopg
//! session keeps its session-level setting, its prepared statements and its cancel key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pgbouncer::free_port;
use common::python::require_python_module;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pgward");

/// A pgward process of the test, killed if the test ends before it exited.
struct Proc {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Proc {
    fn start(config: &Path, log: PathBuf, notify: &Path) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env("PGWARD_LOG", "info,pgward::upgrade=debug")
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start pgward");
        Proc {
            child,
            log,
            started: Instant::now(),
        }
    }

    /// Wait for the process to exit by itself; its exit status and how long it ran.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, self.started.elapsed());
            }
            assert!(
                t.elapsed() < limit,
                "pgward {} did not exit within {limit:?}:\n{}",
                self.child.id(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `key=` in the first log line containing `needle`.
    fn logged(&self, needle: &str, key: &str) -> Option<String> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains(needle))?;
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        Some(line[at..].split_whitespace().next()?.to_string())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Wait (at most 10 s) until `p` logged that it took over the listeners.
async fn took_over(p: &Proc) {
    let t = Instant::now();
    while !p.log_text().contains("took over the listeners") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_listening(port: u16, p: &Proc) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pgward did not listen:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// "number of transactions actually processed: N" of a pgbench output.
fn processed(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The longest latency (ms) of the transactions of `timeline` ([start, ms] pairs) that
/// started within [from, to].
fn slowest(timeline: &serde_json::Value, from: f64, to: f64) -> f64 {
    let empty = Vec::new();
    timeline
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|e| Some((e[0].as_f64()?, e[1].as_f64()?)))
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|(_, ms)| ms)
        .fold(0.0, f64::max)
}

/// A configuration file with `upgrade_socket`, fixed client and HTTP ports, and the socket
/// its processes report to as to systemd (`NOTIFY_SOCKET`).
struct Setup {
    name: String,
    config: PathBuf,
    socket: PathBuf,
    port: u16,
    notify_path: PathBuf,
    notify: std::os::unix::net::UnixDatagram,
}

impl Setup {
    fn new(name: &str, pg_port: u16) -> Setup {
        Setup::with_mode(name, pg_port, "transaction")
    }

    fn with_mode(name: &str, pg_port: u16, mode: &'static str) -> Setup {
        let tmp = std::env::temp_dir();
        let name = format!("pgward-{name}-{}", std::process::id());
        let socket = tmp.join(format!("{name}.sock"));
        let o = Opts {
            size: 10,
            mode,
            extra: TENANTS.to_string(),
            top_extra: format!("upgrade_socket = \"{}\"", socket.display()),
            ..Opts::default()
        };
        let (port, http) = (free_port(), free_port());
        let text = config_text(pg_port, &o).replace(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\""),
        );
        assert!(
            text.contains(&format!(":{http}")),
            "config template changed"
        );
        let config = tmp.join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let notify_path = tmp.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
        notify.set_nonblocking(true).unwrap();
        Setup {
            name,
            config,
            socket,
            port,
            notify_path,
            notify,
        }
    }

    /// Start pgward number `n` with this configuration.
    fn start(&self, n: usize) -> Proc {
        let log = std::env::temp_dir().join(format!("{}-{n}.log", self.name));
        Proc::start(&self.config, log, &self.notify_path)
    }

    /// What the processes told "systemd" so far.
    fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.notify_path);
    }
}

#[test]
fn binary_replaced_twice_under_load() {
    let pg = start_pg();
    pgbench_init(&pg, 1);
    let setup = Setup::new("upgrade", pg.port());
    let port = setup.port;
    let mut first = setup.start(1);
    wait_listening(port, &first);

    let secs = 20u64;
    let t = secs.to_string();
    let dsn = format!(
        "host=127.0.0.1 port={port} user=app_user dbname=app password={PASSWORD} sslmode=disable"
    );
    let with_python = require_python_module("psycopg");
    let pg = &pg;
    std::thread::scope(|s| {
        let benches =
            [("app_user", "prepared"), ("app_user.acme", "simple")].map(|(user, mode)| {
                let args = ["-n", "-c", "4", "-j", "2", "-T", &t, "-M", mode];
                let run = s.spawn(move || pgbench(pg, port, user, PASSWORD, "app", &args));
                (user, mode, run)
            });
        let python = with_python.then(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upgrade/psycopg_loop.py");
            let dsn = &dsn;
            s.spawn(move || {
                Command::new("python3")
                    .arg(script)
                    .arg(dsn)
                    .arg((secs - 2).to_string())
                    .output()
                    .expect("run python3")
            })
        });

        // Two takeovers while the load runs: each old process must hand over and exit.
        std::thread::sleep(Duration::from_secs(5));
        let mut at = vec![now()];
        let mut second = setup.start(2);
        let (st1, _) = first.wait_exit(Duration::from_secs(40));
        std::thread::sleep(Duration::from_secs(4));
        at.push(now());
        let third = setup.start(3);
        let (st2, _) = second.wait_exit(Duration::from_secs(40));

        for (n, (old, new)) in [(&first, &second), (&second, &third)].iter().enumerate() {
            let moved = |key| old.logged("handed over to the new process", key);
            eprintln!(
                "takeover {}: listeners in {} ms; old process moved {} clients in {} s (left: {})",
                n + 1,
                new.logged("took over the listeners", "ms")
                    .unwrap_or_default(),
                moved("clients_moved").unwrap_or_default(),
                moved("seconds").unwrap_or_default(),
                moved("clients_left").unwrap_or_default(),
            );
        }
        assert!(st1.success(), "first pgward: {st1}\n{}", first.log_text());
        assert!(st2.success(), "second pgward: {st2}\n{}", second.log_text());

        for (user, mode, run) in benches {
            let b = run.join().unwrap();
            let n = processed(&b.output);
            eprintln!(
                "pgbench {user} -M {mode}: processed {n}, failed {}",
                b.failed
            );
            assert!(b.ok, "pgbench {user} -M {mode} failed:\n{}", b.output);
            assert!(
                b.output.contains("number of failed transactions: 0 "),
                "pgbench {user} -M {mode}:\n{}",
                b.output
            );
            assert!(
                n > 0,
                "pgbench {user} -M {mode} processed nothing:\n{}",
                b.output
            );
        }
        if let Some(run) = python {
            let out = run.join().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "psycopg loop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("summary");
            let timeline = v["timeline"].take();
            eprintln!("psycopg loop: {v}");
            for (n, t) in at.iter().enumerate() {
                eprintln!(
                    "takeover {}: slowest psycopg transaction from 0.5 s before to 2 s after the new process started: {:.1} ms",
                    n + 1,
                    slowest(&timeline, t - 0.5, t + 2.0)
                );
            }
            assert_eq!(v["error_count"], 0, "psycopg loop errors: {v}");
            assert!(v["transactions"].as_u64().unwrap_or(0) > 0, "{v}");
            assert!(v["new_connections"].as_u64().unwrap_or(0) > 0, "{v}");
            assert_eq!(v["cancelled"], true, "cancel through the moved key: {v}");
        }
        // As systemd (Type=notify, NotifyAccess=all) would see it: ready, then each
        // successor the unit's main process.
        let pid = |p: &Proc| p.child.id();
        assert_eq!(
            setup.notices(),
            [
                "READY=1".to_string(),
                format!("MAINPID={}\nREADY=1", pid(&second)),
                format!("MAINPID={}\nREADY=1", pid(&third)),
            ],
            "sd_notify messages"
        );
        // The third process still serves, on the same port.
        let mut third = third;
        assert!(
            third.child.try_wait().unwrap().is_none(),
            "{}",
            third.log_text()
        );
        wait_listening(port, &third);
    });
}

/// A socket file nobody accepts on (a process that died) does not stop a start: it is
/// replaced by this process's own, mode 0600. A takeover that fails (garbage, or no Ready)
/// leaves the process serving. SIGTERM without a successor drains and exits 0 as before.
#[test]
fn stale_socket_failed_takeovers_and_sigterm() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // No PostgreSQL is needed to start (no connection is opened before a client asks).
    let setup = Setup::new("stale", 1);
    let (socket, port) = (&setup.socket, setup.port);
    drop(std::os::unix::net::UnixListener::bind(socket).unwrap()); // leaves the file
    let mut p = setup.start(1);
    wait_listening(port, &p);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = std::fs::metadata(socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(p.log_text().contains("stale"), "{}", p.log_text());

    // Takeovers that fail change nothing: garbage, then a Hello that never says Ready.
    {
        let mut u = std::os::unix::net::UnixStream::connect(socket).unwrap();
        u.write_all(b"\0\0\0\x03abc").unwrap();
    }
    {
        let mut u = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let hello = br#"{"type":"hello","version":1,"pid":1}"#;
        u.write_all(&(hello.len() as u32).to_be_bytes()).unwrap();
        u.write_all(hello).unwrap();
        let mut len = [0u8; 4];
        u.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        u.read_exact(&mut body).unwrap();
        assert!(String::from_utf8_lossy(&body).contains("listeners"));
    } // closed without Ready
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        // Still accepting: an SSLRequest is answered.
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
        let mut answer = [0u8; 1];
        c.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"N", "{}", p.log_text());
    }
    assert!(
        p.log_text().contains("takeover by a new process failed"),
        "{}",
        p.log_text()
    );
    let killed = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (st, _) = p.wait_exit(Duration::from_secs(35));
    assert!(st.success(), "{st}\n{}", p.log_text());
}

/// A client in the middle of a long statement stays in the old process; a cancel request for
/// it reaches the new process (the old one no longer accepts) and is passed back. Then the
/// client moves at the end of its transaction and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_client_still_in_the_old_process() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let setup = Setup::new("cancel", pg.port());
    let mut first = setup.start(1);
    wait_listening(setup.port, &first);
    let url = format!(
        "postgres://app_user:{PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        setup.port
    );
    let client = std::sync::Arc::new(connect(&url).await.unwrap());
    let token = client.cancel_token();
    let c = client.clone();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = setup.start(2);
    took_over(&second).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the old process stopped accepting
    let t = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let e = sleeper.await.unwrap().expect_err("pg_sleep was cancelled");
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        second.log_text().contains("passed to the previous process"),
        "{}",
        second.log_text()
    );
    // Its transaction over, the session moves to the new process and goes on there.
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
    let (st, _) = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(10)));
    assert!(st.success(), "{}", first.log_text());
    assert_eq!(
        first.logged("handed over to the new process", "clients_moved"),
        Some("1".into()),
        "{}",
        first.log_text()
    );
    assert_eq!(scalar(&client, "SELECT 2").await, "2");
}

/// A moved client that the new process's configuration no longer admits (its tenant was
/// removed) is told why, with the FATAL a login would get, not closed without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_client_the_new_configuration_refuses_is_told_why() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let setup = Setup::new("refused", pg.port());
    let mut first = setup.start(1);
    wait_listening(setup.port, &first);
    let url = format!(
        "postgres://app_user.acme:{PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        setup.port
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(
        scalar(&client, "SELECT current_setting('app.tenant_id')").await,
        "acme"
    );
    // The successor's configuration has no tenant "acme".
    let text = std::fs::read_to_string(&setup.config).unwrap();
    assert!(text.contains("id = \"acme\""));
    std::fs::write(
        &setup.config,
        text.replace("id = \"acme\"", "id = \"acme2\""),
    )
    .unwrap();
    let _second = setup.start(2);
    let (st, _) = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(10)));
    assert!(st.success(), "{}", first.log_text());
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the client was told")
        .unwrap();
    let e = ended.expect_err("the connection ended with an error");
    assert_eq!(sqlstate(&e), "28000", "{e}");
    let msg = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    assert!(msg.contains("acme"), "{msg}");
}

/// A session-mode client cannot move (its session lives on its server connection): it keeps
/// being served by the old process while new clients reach the new one, and the old process
/// exits as soon as that client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_stays_with_the_old_process_until_it_leaves() {
    let pg = tokio::task::spawn_blocking(start_pg).await.unwrap();
    let setup = Setup::with_mode("session", pg.port(), "session");
    let mut first = setup.start(1);
    wait_listening(setup.port, &first);
    let url = format!(
        "postgres://app_user:{PASSWORD}@127.0.0.1:{}/app?sslmode=disable",
        setup.port
    );
    let old_client = connect(&url).await.unwrap();
    old_client
        .batch_execute("CREATE TEMP TABLE mine (x int); INSERT INTO mine VALUES (7)")
        .await
        .unwrap();
    let second = setup.start(2);
    took_over(&second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Its session (a temporary table) is intact, served by the old process.
    assert_eq!(scalar(&old_client, "SELECT x FROM mine").await, "7");
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the old process left its client"
    );
    // New clients reach the new process.
    let new_client = connect(&url).await.unwrap();
    assert_eq!(scalar(&new_client, "SELECT 1").await, "1");
    drop(old_client);
    let (st, ran) = tokio::task::block_in_place(|| first.wait_exit(Duration::from_secs(10)));
    assert!(st.success(), "{}", first.log_text());
    assert!(
        ran < Duration::from_secs(30),
        "the old process waited for the drain bound"
    );
    assert_eq!(scalar(&new_client, "SELECT 2").await, "2");
}
