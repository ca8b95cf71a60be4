//! Test harness: a real PostgreSQL started by the test (src/pgctl.rs) and pgward running
//! in-process on free ports in front of it, plus helpers for real clients (tokio-postgres,
//! psql, pgbench).
#![allow(dead_code)]

pub mod pgbouncer;
pub mod python;
pub mod wire;

use std::path::PathBuf;
use std::process::Command;

use pgward::config::Config;
use pgward::pgctl::{PgOptions, TempPostgres};
use pgward::run::Running;

pub const PASSWORD: &str = "secret-pw";
pub const UPSTREAM_PASSWORD: &str = "upstream-pw";

/// Roles, a database and two tenant schemas with an RLS-protected shared table.
pub const FIXTURE_SQL: &str = r#"
CREATE ROLE pgward LOGIN PASSWORD 'upstream-pw' CREATEDB;
CREATE ROLE tenant_acme NOLOGIN;
CREATE ROLE tenant_globex NOLOGIN;
GRANT tenant_acme, tenant_globex TO pgward;
CREATE DATABASE app OWNER pgward;
\c app
SET ROLE pgward;
CREATE SCHEMA acme;
CREATE SCHEMA globex;
CREATE TABLE acme.items (id int PRIMARY KEY, name text);
CREATE TABLE globex.items (id int PRIMARY KEY, name text);
INSERT INTO acme.items VALUES (1, 'acme-one'), (2, 'acme-two');
INSERT INTO globex.items VALUES (1, 'globex-one');
CREATE TABLE public.orders (id serial PRIMARY KEY, tenant_id text NOT NULL, item text);
INSERT INTO public.orders (tenant_id, item) VALUES ('acme', 'anvil'), ('globex', 'device');
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.orders USING (tenant_id = current_setting('app.tenant_id', true));
GRANT USAGE ON SCHEMA acme TO tenant_acme;
GRANT USAGE ON SCHEMA globex TO tenant_globex;
GRANT ALL ON ALL TABLES IN SCHEMA acme TO tenant_acme;
GRANT ALL ON ALL TABLES IN SCHEMA globex TO tenant_globex;
GRANT ALL ON public.orders TO tenant_acme, tenant_globex;
GRANT CREATE ON SCHEMA public TO tenant_acme, tenant_globex;
"#;

pub struct Opts {
    pub mode: &'static str,
    pub size: usize,
    pub min_size: usize,
    pub checkout_timeout: &'static str,
    pub session_state: &'static str,
    /// Appended to the generated configuration (tenants, more users…).
    pub extra: String,
    pub max_clients: usize,
    pub max_message_size: usize,
    /// Query string of the upstream URL.
    pub upstream_params: String,
    /// Extra postgresql.conf settings for the test's PostgreSQL.
    pub pg_conf: Vec<(String, String)>,
    /// Extra lines for the `[pool]` section.
    pub pool_extra: String,
    /// Extra top-level lines.
    pub top_extra: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mode: "transaction",
            size: 5,
            min_size: 0,
            checkout_timeout: "5s",
            session_state: "reset",
            extra: String::new(),
            max_clients: 10_000,
            max_message_size: 64 << 20,
            upstream_params: "sslmode=disable".into(),
            pg_conf: Vec::new(),
            pool_extra: String::new(),
            top_extra: String::new(),
        }
    }
}

pub const TENANTS: &str = r#"
[[tenants]]
id = "acme"
database = "app"
search_path = ["acme", "public"]
settings = { "app.tenant_id" = "acme" }

[[tenants]]
id = "globex"
database = "app"
search_path = ["globex", "public"]
settings = { "app.tenant_id" = "globex" }
role = "tenant_globex"
"#;

pub struct Harness {
    pub pg: TempPostgres,
    pub proxy: Running,
    /// The configuration file pgward was started from (RELOAD reads it again).
    pub config_path: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGWARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn start_pg() -> TempPostgres {
    start_pg_with(Vec::new())
}

pub fn start_pg_with(mut conf: Vec<(String, String)>) -> TempPostgres {
    conf.push(("max_connections".into(), "300".into()));
    let pg = TempPostgres::start(PgOptions {
        extra_conf: conf,
        ..PgOptions::default()
    })
    .expect("start PostgreSQL");
    pg.psql("postgres", FIXTURE_SQL).expect("fixture");
    pg
}

pub fn config_text(pg_port: u16, o: &Opts) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
admin_users = ["admin"]
max_message_size = {max_msg}
{top_extra}

[pool]
mode = "{mode}"
size = {size}
min_size = {min_size}
checkout_timeout = "{ct}"
session_state = "{ss}"
max_client_connections = {maxc}
{pool_extra}

[[databases]]
name = "app"
upstream = "postgres://pgward:{up}@127.0.0.1:{pg_port}/app?{upq}"

[[users]]
name = "app_user"
password = "{pw}"

[[users]]
name = "md5_user"
password = "{pw}"
auth = "md5"

[[users]]
name = "admin"
password = "{pw}"
{extra}
"#,
        max_msg = o.max_message_size,
        mode = o.mode,
        size = o.size,
        min_size = o.min_size,
        ct = o.checkout_timeout,
        ss = o.session_state,
        maxc = o.max_clients,
        up = UPSTREAM_PASSWORD,
        upq = o.upstream_params,
        pw = PASSWORD,
        extra = o.extra,
        top_extra = o.top_extra,
        pool_extra = o.pool_extra,
    )
}

impl Harness {
    pub async fn start(o: Opts) -> Harness {
        init_tracing();
        let conf = o.pg_conf.clone();
        let pg = tokio::task::spawn_blocking(move || start_pg_with(conf))
            .await
            .unwrap();
        let text = config_text(pg.port(), &o);
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let config_path = std::env::temp_dir().join(format!(
            "pgward-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&config_path, &text).unwrap();
        let cfg = Config::load(&config_path).expect("config");
        let proxy = pgward::run::start(cfg).await.expect("start pgward");
        Harness {
            pg,
            proxy,
            config_path,
        }
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port()
        )
    }

    pub fn direct_url(&self, db: &str) -> String {
        format!(
            "postgres://pgward:{UPSTREAM_PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.pg.port()
        )
    }

    pub async fn connect(&self, user: &str, db: &str) -> tokio_postgres::Client {
        connect(&self.url(user, db))
            .await
            .expect("connect through pgward")
    }

    pub async fn connect_direct(&self) -> tokio_postgres::Client {
        connect(&self.direct_url("app"))
            .await
            .expect("connect directly")
    }

    /// Run psql against pgward; returns (success, stdout, stderr).
    pub fn psql(&self, user: &str, db: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(self.pg.bin_dir().join("psql"))
            .arg(self.url(user, db))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Number of server connections pgward holds to PostgreSQL (by user name).
    pub async fn upstream_connections(&self) -> i64 {
        let c = self.connect_direct().await;
        let rows = c
            .simple_query("SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgward' AND pid <> pg_backend_pid()")
            .await
            .unwrap();
        first_value(&rows).parse().unwrap()
    }
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The first column of the first row of a simple_query result.
pub fn first_value(rows: &[tokio_postgres::SimpleQueryMessage]) -> String {
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("").to_string();
        }
    }
    panic!("no row in result");
}

pub async fn scalar(c: &tokio_postgres::Client, sql: &str) -> String {
    first_value(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Result of a pgbench run.
pub struct Bench {
    pub ok: bool,
    pub tps: f64,
    pub failed: u64,
    pub output: String,
}

/// Run pgbench against `port` as `user` (password PASSWORD unless `password` given).
pub fn pgbench(
    pg: &TempPostgres,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> Bench {
    let out = Command::new(pg.bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let failed = text
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let aborted = text.lines().any(|l| l.contains("aborted"));
    Bench {
        ok: out.status.success() && !aborted,
        tps,
        failed,
        output: text,
    }
}

/// Initialise pgbench tables directly on PostgreSQL (as the upstream user).
pub fn pgbench_init(pg: &TempPostgres, scale: u32) {
    let b = pgbench(
        pg,
        pg.port(),
        "pgward",
        UPSTREAM_PASSWORD,
        "app",
        &["-i", "-q", "-s", &scale.to_string()],
    );
    assert!(b.ok, "pgbench -i failed: {}", b.output);
}

/// Seconds for load tests (PGWARD_LOAD_SECONDS, default 20).
pub fn load_seconds() -> u64 {
    std::env::var("PGWARD_LOAD_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// SHOW POOLS of database `app` through the admin console: (cl_waiting, maxwait in µs).
pub fn pool_waits(h: &Harness) -> (u64, u64) {
    let out = Command::new(h.pg.bin_dir().join("psql"))
        .arg(h.url("admin", "pgward"))
        .args(["-X", "-A", "-c", "SHOW POOLS"])
        .output()
        .expect("run psql");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines().map(|l| l.split('|').collect::<Vec<_>>());
    let cols = lines.next().unwrap_or_default();
    let row = lines
        .find(|r| r.first() == Some(&"app"))
        .unwrap_or_else(|| panic!("no pool app: {text}"));
    let get = |name: &str| -> u64 {
        let i = cols.iter().position(|c| *c == name).unwrap();
        row[i].parse().unwrap()
    };
    (
        get("cl_waiting"),
        get("maxwait") * 1_000_000 + get("maxwait_us"),
    )
}

/// GET `path` from pgward's HTTP listener: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
