//! `pgward import-pgbouncer` with the real binary: Debian's packaged pgbouncer.ini, a
//! CloudNativePG-style generated one, and a round trip — PgBouncer and then pgward, started
//! from the same ini, serve the same client connection strings with the same answers.
//!
//! The round trip needs PostgreSQL server binaries (as every test here) and PgBouncer
//! (`PGBOUNCER`, else `pgbouncer` on PATH or /usr/sbin/pgbouncer). Without PgBouncer it is
//! skipped with a note, unless `CI` is set, where that is a failure. As root, PgBouncer runs
//! as the `postgres` user (it refuses to run as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{scalar, PASSWORD, UPSTREAM_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_pgward");

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pgbouncer")
        .join(rel)
}

fn pgward(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PGWARD_LISTEN")
        .env_remove("PGWARD_UPSTREAM")
        .env_remove("PGWARD_POOL_SIZE")
        .env_remove("PGWARD_HTTP_LISTEN")
        .output()
        .expect("run pgward")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgward-import-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// check-config on `toml`, which must pass.
fn check_config(dir: &Path, toml: &str) {
    let path = dir.join("checked.toml");
    std::fs::write(&path, toml).unwrap();
    let out = pgward(&["check-config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check-config failed: {}\n{toml}",
        text(&out.stderr)
    );
}

#[test]
fn debian_packaged_ini_imports_and_checks() {
    let dir = temp_dir("debian");
    let mut inputs = vec![(
        fixture("debian-pgbouncer.ini"),
        Some(fixture("debian-userlist.txt")),
    )];
    let live = Path::new("/etc/pgbouncer/pgbouncer.ini");
    if live.exists() {
        inputs.push((live.to_path_buf(), None));
    } else {
        eprintln!(
            "{} absent: only the fixture copy is imported",
            live.display()
        );
    }
    // The fixture has the packaged file's settings; a live file with other settings was
    // edited by someone and is checked leniently.
    let settings = |path: &Path| -> Option<Vec<String>> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with(';') && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
        )
    };
    let packaged = settings(&fixture("debian-pgbouncer.ini")).unwrap();
    for (ini, userlist) in inputs {
        let mut args = vec!["import-pgbouncer", ini.to_str().unwrap()];
        if let Some(u) = &userlist {
            args.extend(["--userlist", u.to_str().unwrap()]);
        }
        let out = pgward(&args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        if settings(&ini).as_ref() != Some(&packaged) {
            // A live file someone edited: only no crash, and a written result that checks.
            eprintln!(
                "{} differs from the packaged file: checked leniently",
                ini.display()
            );
            assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
            if out.status.success() {
                check_config(&dir, &stdout);
            }
            continue;
        }
        assert!(
            out.status.success(),
            "{}: exit {:?}\n{stderr}",
            ini.display(),
            out.status
        );
        // Debian's file: Unix socket only at 6432 in PgBouncer; TCP on localhost here.
        assert!(stdout.contains("listen = \"127.0.0.1:6432\""), "{stdout}");
        assert!(stdout.contains("mode = \"session\""), "{stdout}");
        let name = ini.file_name().unwrap().to_str().unwrap().to_string();
        for key in ["logfile", "pidfile", "unix_socket_dir"] {
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("key `{key}`: not carried over")))
                .unwrap_or_else(|| panic!("no line for {key}:\n{stderr}"));
            assert!(line.contains(&format!("{name}:")), "{line}");
        }
        check_config(&dir, &stdout);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cloudnativepg_style_ini() {
    let dir = temp_dir("cnpg");
    let ini = fixture("cnpg/pgbouncer.ini");
    let ini = ini.to_str().unwrap();
    // The `*` fallback alone: not servable as is (pgward has no wildcard database).
    let out = pgward(&["import-pgbouncer", ini]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pgbouncer.ini:6: key `*`") && stderr.contains("--wildcard-db"),
        "{stderr}"
    );
    // Naming the databases behind `*` makes it complete.
    let toml_path = dir.join("pgward.toml");
    let out = pgward(&[
        "import-pgbouncer",
        ini,
        "--wildcard-db",
        "app",
        "--wildcard-db",
        "reports",
        "-o",
        toml_path.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "-o writes the file, not stdout");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    for want in [
        "listen = \"0.0.0.0:5432\"",
        "mode = \"transaction\"",
        "size = 25",
        "max_client_connections = 1000",
        "checkout_timeout = \"30s\"",
        "idle_timeout = \"300s\"",
        "name = \"app\"",
        "name = \"reports\"",
        "upstream = \"postgres://cnpg_pooler_pgbouncer:Pooler-Secret-42@cluster-example-rw:5432/reports?sslmode=verify-ca&sslrootcert=%2Fcontroller%2Fcertificates%2Fserver-ca.crt\"",
        "client_tls = \"allow\"",
        "cert = \"/controller/certificates/client-tls.crt\"",
        "[auth_query]",
        "query = \"SELECT usename, passwd FROM public.user_search($1)\"",
        "cluster-example-rw:5432/postgres?sslmode=prefer",
    ] {
        assert!(toml.contains(want), "missing {want}:\n{toml}");
    }
    for (file_line, key) in [
        ("user-parameters.ini:4", "server_reset_query"),
        ("user-parameters.ini:5", "stats_users"),
        ("user-parameters.ini:6", "reserve_pool_size"),
        ("pgbouncer.ini:23", "ignore_startup_parameters"),
        ("pgbouncer.ini:17", "auth_type"),
        ("pgbouncer.ini:16", "auth_hba_file"),
        ("pgbouncer.ini:14", "admin_users"),
    ] {
        assert!(
            stderr.contains(&format!("{file_line}: key `{key}`")),
            "no line for {key} at {file_line}:\n{stderr}"
        );
    }
    // No secret on stderr.
    assert!(!stderr.contains("Pooler-Secret-42"), "{stderr}");
    check_config(&dir, &toml);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreadable_or_bad_input_is_a_clear_error() {
    let dir = temp_dir("bad");
    let ini = dir.join("bad.ini");
    std::fs::write(
        &ini,
        "[databases]\napp = host=x password='unterminated\n[pgbouncer]\nthis is not a pair\n",
    )
    .unwrap();
    let out = pgward(&["import-pgbouncer", ini.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.ini:4: expected `key = value`"),
        "{stderr}"
    );
    let out = pgward(&[
        "import-pgbouncer",
        dir.join("missing.ini").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- round trip ------------------------------------------------------------------------

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_port_free(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{port} stays busy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn md5_secret(password: &str, user: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(format!("{password}{user}").as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("md5{hex}")
}

/// What a client sees: the same queries against PgBouncer and pgward.
async fn session(url: &str) -> Vec<String> {
    let c = common::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let mut seen = Vec::new();
    for sql in [
        "SELECT string_agg(name, ',' ORDER BY id) FROM acme.items",
        "SELECT current_user",
        "SELECT current_database()",
        "BEGIN; INSERT INTO acme.items VALUES (100 + pg_backend_pid() % 1000, 'rt') ON CONFLICT DO NOTHING; ROLLBACK; SELECT count(*) FROM acme.items",
        "SELECT 1.0::float8 / 3",
    ] {
        seen.push(scalar(&c, sql).await);
    }
    // Extended protocol, unnamed statement (works in transaction mode on both).
    let rows = c
        .query_typed(
            "SELECT $1::text || '!'",
            &[(&"hi", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .expect("extended query");
    seen.push(rows[0].get::<_, String>(0));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_pgbouncer_then_pgward_same_clients() {
    let Some(bouncer) = common::pgbouncer::require() else {
        return;
    };
    let pg = tokio::task::spawn_blocking(common::start_pg).await.unwrap();
    let dir = temp_dir("roundtrip");
    let port = common::pgbouncer::free_port();
    std::fs::write(
        dir.join("userlist.txt"),
        format!(
            ";; clients\n\"app_user\" \"{PASSWORD}\"\n\"md5_user\" \"{}\"\n",
            md5_secret(PASSWORD, "md5_user")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pool.ini"),
        "pool_mode = transaction\ndefault_pool_size = 4\nquery_wait_timeout = 10\nserver_reset_query = DISCARD ALL\n",
    )
    .unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            ";; written by tests/import_pgbouncer.rs\n\
             [databases]\n\
             app = host=127.0.0.1 port={pg} dbname=app user=pgward password='{UPSTREAM_PASSWORD}' pool_size=3\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = md5\n\
             auth_file = userlist.txt\n\
             admin_users = app_user\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             %include pool.ini\n",
            pg = pg.port(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        ),
    )
    .unwrap();
    let urls: Vec<String> = ["app_user", "md5_user"]
        .iter()
        .map(|u| format!("postgres://{u}:{PASSWORD}@127.0.0.1:{port}/app?sslmode=disable"))
        .collect();

    let bouncer_proc = common::pgbouncer::PgBouncer::run(&bouncer, &dir, &ini, port);
    let mut via_bouncer = Vec::new();
    for u in &urls {
        via_bouncer.push(session(u).await);
    }
    drop(bouncer_proc);
    assert_eq!(via_bouncer[0][0], "acme-one,acme-two", "{via_bouncer:?}");
    assert_eq!(via_bouncer[0][1], "pgward", "forced user: {via_bouncer:?}");
    assert_eq!(via_bouncer[0], via_bouncer[1], "md5_user sees the same");
    wait_port_free(port);

    let toml_path = dir.join("pgward.toml");
    let out = pgward(&[
        "import-pgbouncer",
        ini.to_str().unwrap(),
        "-o",
        toml_path.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    for key in [
        "logfile",
        "pidfile",
        "server_reset_query",
        "ignore_startup_parameters",
    ] {
        assert!(
            stderr.contains(&format!("key `{key}`")),
            "no line for {key}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains(UPSTREAM_PASSWORD) && !stderr.contains(PASSWORD),
        "{stderr}"
    );
    let check = pgward(&["check-config", toml_path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "check-config: {}",
        text(&check.stderr)
    );
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    assert!(
        toml.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{toml}"
    );

    let child = Command::new(BIN)
        .arg("--config")
        .arg(&toml_path)
        .env("PGWARD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start pgward");
    let _pgward = Proc(child);
    wait_port(port, "pgward");
    for (u, expected) in urls.iter().zip(&via_bouncer) {
        let got = session(u).await;
        assert_eq!(
            &got, expected,
            "{u}: pgward answers differently from PgBouncer"
        );
    }
    // The imported admin user opens pgward's console.
    let admin = common::connect(&format!(
        "postgres://app_user:{PASSWORD}@127.0.0.1:{port}/pgward?sslmode=disable"
    ))
    .await
    .expect("admin console");
    admin.simple_query("SHOW POOLS").await.expect("SHOW POOLS");
    let _ = std::fs::remove_dir_all(&dir);
}
