//! Throwaway PostgreSQL servers built from the installed binaries, for the
//! tests and `pgward demo`.
//!
//! [`TempPostgres::start`] runs `initdb` into a fresh temporary directory,
//! starts the server with `pg_ctl -w` on `127.0.0.1` (plus a unix socket in
//! that directory) and returns once it accepts TCP connections. Everything is
//! synchronous (`std::process`); call it from `spawn_blocking` in async code.
//!
//! Invariants:
//! - Each server owns one temporary directory holding `data/`, the unix
//!   socket and `postgres.log`. Dropping the [`TempPostgres`] stops the server
//!   with `pg_ctl stop -m immediate`, waits until the postmaster has exited and
//!   only then removes the directory.
//! - Our settings live in `data/pgward.conf`, included once from
//!   `postgresql.conf`; [`PgOptions::extra_conf`] comes last, so it wins.
//! - Automatically picked ports are distinct among this process's live
//!   servers. If the server still cannot bind ("could not bind" in the log),
//!   another port is picked, up to `PORT_ATTEMPTS` times.
//! - As root, `initdb`, `pg_ctl` and `psql` run as the `postgres` OS user via
//!   `runuser` (PostgreSQL refuses to run as root), and the temporary
//!   directory and the files we write belong to that user.
//! - No `unsafe`: user ids come from `id`, signals are sent with `kill`, and
//!   only this server's postmaster or a timed-out command of ours is killed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable that, when set, names the directory holding
/// `initdb`, `pg_ctl`, `postgres` and `psql`; it is checked before `PATH`.
pub const BIN_DIR_ENV: &str = "PGWARD_PG_BINDIR";

const HOST: &str = "127.0.0.1";
/// OS user the server runs as when we are root.
const PG_USER: &str = "postgres";
/// `pg_ctl -w -t`; our own limit for the command is 30 s longer.
const PG_CTL_WAIT_SECS: u64 = 60;
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
const PSQL_TIMEOUT: Duration = Duration::from_secs(600);
const PORT_ATTEMPTS: usize = 5;
/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Errors from starting, controlling or querying a [`TempPostgres`].
#[derive(Debug, thiserror::Error)]
pub enum PgCtlError {
    /// The PostgreSQL binaries (or the `postgres` OS user) could not be found.
    #[error("not found: {0}")]
    NotFound(String),
    /// A command ran and exited unsuccessfully.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        what: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("{what} timed out after {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    /// The server did not come up (e.g. no free port after several attempts).
    #[error("server did not start: {0}")]
    Start(String),
    /// A [`PgOptions`] value cannot be used.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How to set up a [`TempPostgres`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Name of the bootstrap superuser (default `postgres`).
    pub superuser: String,
    /// Password of the superuser (default `postgres`). Empty: no password.
    pub superuser_password: String,
    /// Auth method for TCP connections in `pg_hba.conf`: `scram-sha-256`
    /// (default), `md5`, `password` or `trust`. With `md5`,
    /// `password_encryption` is set to `md5` as well (unless `extra_conf`
    /// sets it) and the superuser's password is stored as an MD5 hash, so
    /// that clients really go through MD5 authentication.
    pub host_auth: String,
    /// Extra `postgresql.conf` settings, written after the defaults so they
    /// override them (e.g. `("max_connections", "200")`, `("ssl", "on")`).
    /// Values are quoted as needed; a value already in single quotes is
    /// written as is. `port` and `unix_socket_directories` are rejected.
    pub extra_conf: Vec<(String, String)>,
    /// TCP port; `None` picks a free one.
    pub port: Option<u16>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            superuser: "postgres".to_string(),
            superuser_password: "postgres".to_string(),
            host_auth: "scram-sha-256".to_string(),
            extra_conf: Vec::new(),
            port: None,
        }
    }
}

/// A PostgreSQL server in its own temporary directory, stopped and removed
/// on drop.
#[derive(Debug)]
pub struct TempPostgres {
    opts: PgOptions,
    bin_dir: PathBuf,
    /// The temporary directory: `data/`, the unix socket and the log.
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    /// The port was picked by us and is reserved in `PORTS_IN_USE`.
    auto_port: bool,
    /// uid and gid of the `postgres` OS user when we are root.
    owner: Option<(u32, u32)>,
}

impl TempPostgres {
    /// Create, configure and start a server; returns once it accepts
    /// connections on TCP.
    pub fn start(opts: PgOptions) -> Result<TempPostgres, PgCtlError> {
        validate(&opts)?;
        let bin_dir = find_bin_dir()?;
        let owner = if is_root()? {
            Some(pg_user_ids()?)
        } else {
            None
        };
        let base_dir = create_temp_dir(owner)?;
        let (port, auto_port) = match opts.port {
            Some(port) => (port, false),
            None => (pick_free_port()?, true),
        };
        let mut pg = TempPostgres {
            data_dir: base_dir.join("data"),
            log_file: base_dir.join("postgres.log"),
            base_dir,
            bin_dir,
            opts,
            port,
            auto_port,
            owner,
        };
        // From here on, an early return drops `pg`, which cleans up.
        pg.initdb()?;
        pg.write_conf()?;
        for attempt in 1.. {
            let log_len = fs::metadata(&pg.log_file).map_or(0, |m| m.len());
            match pg.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if auto_port && attempt < PORT_ATTEMPTS && pg.port_taken_since(log_len) => {
                    tracing::debug!(port = pg.port, error = %e, "port taken, retrying");
                    let taken = std::mem::replace(&mut pg.port, pick_free_port()?);
                    release_port(taken);
                    pg.write_conf()?;
                }
                Err(e) => return Err(e),
            }
        }
        let sets_encryption = pg
            .opts
            .extra_conf
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("password_encryption"));
        if pg.opts.host_auth == "md5" && !pg.opts.superuser_password.is_empty() && !sets_encryption
        {
            // initdb stored the superuser password as SCRAM; store it as MD5.
            let sql = format!(
                "ALTER ROLE {} PASSWORD {};",
                quote_ident(&pg.opts.superuser),
                quote_literal(&pg.opts.superuser_password)
            );
            pg.psql("postgres", &sql)?;
        }
        tracing::info!(port = pg.port, dir = %pg.base_dir.display(), "temporary PostgreSQL server started");
        Ok(pg)
    }

    /// TCP port the server listens on (on [`host`](Self::host)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Directory with the PostgreSQL binaries in use (`psql`, `pgbench`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The options this server was started with.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// Run SQL (fed to `psql` on stdin, so several statements and psql
    /// meta-commands work) as the superuser over the unix socket, stopping at
    /// the first error. Returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgCtlError> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.base_dir)
            .args(["-p", &self.port.to_string(), "-U", &self.opts.superuser])
            .args(["-d", db, "-f", "-"]);
        run("psql", cmd, Some(sql), PSQL_TIMEOUT)
    }

    /// Stop the server (`pg_ctl stop -m fast -w`) and wait for it to exit.
    pub fn stop(&self) -> Result<(), PgCtlError> {
        let pid = self.pid();
        self.pg_ctl("pg_ctl stop", Some("fast"))?;
        if let Some(pid) = pid {
            self.wait_gone(pid, Duration::from_secs(30));
        }
        Ok(())
    }

    /// Start the server again after [`stop`](Self::stop), on the same port.
    pub fn start_again(&self) -> Result<(), PgCtlError> {
        self.pg_ctl_start()
    }

    /// Restart the server (`pg_ctl restart -m fast -w`).
    pub fn restart(&self) -> Result<(), PgCtlError> {
        let old = self.pid();
        self.pg_ctl("pg_ctl restart", Some("fast"))?;
        // pg_ctl waited for the old pid file to go; wait for the process too.
        if let Some(pid) = old.filter(|&pid| self.pid() != Some(pid)) {
            self.wait_gone(pid, Duration::from_secs(30));
        }
        self.wait_for_tcp()
    }

    /// Everything the server has logged so far (empty if unreadable).
    pub fn log_contents(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A command for one of the PostgreSQL binaries, run in the temporary
    /// directory as the right OS user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = command(self.bin_dir.join(program), self.owner.is_some());
        cmd.current_dir(&self.base_dir);
        cmd
    }

    fn initdb(&self) -> Result<(), PgCtlError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", &self.opts.superuser, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--auth-local=trust"])
            .arg(format!("--auth-host={}", self.opts.host_auth));
        let pwfile = self.base_dir.join("pwfile");
        if !self.opts.superuser_password.is_empty() {
            self.write_owned(&pwfile, &format!("{}\n", self.opts.superuser_password))?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let res = run("initdb", cmd, None, INITDB_TIMEOUT);
        let _ = fs::remove_file(&pwfile);
        res.map(drop)
    }

    /// Write `pgward.conf` (our settings, then `extra_conf`) into the data
    /// directory and include it from `postgresql.conf` (once).
    fn write_conf(&self) -> Result<(), PgCtlError> {
        let port = self.port.to_string();
        let socket_dir = self.base_dir.to_string_lossy();
        let mut settings = vec![
            ("listen_addresses", HOST),
            ("port", &port),
            ("unix_socket_directories", &socket_dir),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "300"),
        ];
        if self.opts.host_auth == "md5" {
            settings.push(("password_encryption", "md5"));
        }
        settings.extend(
            self.opts
                .extra_conf
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let conf: String = settings
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", conf_value(v)))
            .collect();
        self.write_owned(&self.data_dir.join("pgward.conf"), &conf)?;

        let main_conf = self.data_dir.join("postgresql.conf");
        let include = "include 'pgward.conf'";
        if !fs::read_to_string(&main_conf)?
            .lines()
            .any(|l| l.trim() == include)
        {
            let mut f = fs::OpenOptions::new().append(true).open(&main_conf)?;
            writeln!(f, "\n{include}")?;
        }
        Ok(())
    }

    /// Write a private file owned by the server's OS user.
    fn write_owned(&self, path: &Path, contents: &str) -> Result<(), PgCtlError> {
        fs::write(path, contents)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.owner {
            chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Run `pg_ctl <action> -w` (`what` is `"pg_ctl <action>"`), logging to
    /// our log file when starting; errors carry the end of the server log.
    fn pg_ctl(&self, what: &'static str, mode: Option<&str>) -> Result<(), PgCtlError> {
        let action = what.trim_start_matches("pg_ctl ");
        let mut cmd = self.command("pg_ctl");
        cmd.args([action, "-D"]).arg(&self.data_dir);
        cmd.args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()]);
        if let Some(mode) = mode {
            cmd.args(["-m", mode]);
        }
        if action != "stop" {
            cmd.arg("-l").arg(&self.log_file);
        }
        let timeout = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
        match run(what, cmd, None, timeout) {
            Ok(_) => Ok(()),
            Err(PgCtlError::Command {
                what,
                status,
                mut stderr,
            }) => {
                let tail = log_tail(&self.log_contents());
                if !tail.is_empty() {
                    stderr = format!("{stderr}\nserver log:\n{tail}");
                }
                Err(PgCtlError::Command {
                    what,
                    status,
                    stderr,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), PgCtlError> {
        if let Err(e) = self.pg_ctl("pg_ctl start", None) {
            self.stop_immediate(); // leave nothing half-started behind
            return Err(e);
        }
        self.wait_for_tcp()
    }

    fn wait_for_tcp(&self) -> Result<(), PgCtlError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    let tail = log_tail(&self.log_contents());
                    let msg = format!("no TCP connection to {addr}: {e}\n{tail}");
                    return Err(PgCtlError::Start(msg));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Whether the log written after byte `since` says the port was taken.
    fn port_taken_since(&self, since: u64) -> bool {
        let log = fs::read(&self.log_file).unwrap_or_default();
        let new = String::from_utf8_lossy(log.get(since as usize..).unwrap_or(&log));
        new.contains("could not bind") || new.contains("Address already in use")
    }

    /// The postmaster's pid, from `postmaster.pid`.
    fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl stop -m immediate` and wait for the postmaster to exit,
    /// ignoring errors; used on failure and on drop.
    fn stop_immediate(&self) {
        let Some(pid) = self.pid() else { return };
        if let Err(e) = self.pg_ctl("pg_ctl stop", Some("immediate")) {
            tracing::debug!(error = %e, "pg_ctl stop -m immediate failed");
        }
        self.wait_gone(pid, Duration::from_secs(20));
    }

    /// Wait until postmaster `pid` has exited; SIGKILL it (only if it is
    /// still our postmaster) when that takes longer than `timeout`.
    fn wait_gone(&self, pid: u32, timeout: Duration) {
        if !wait_exit(pid, timeout) && is_postmaster_of(pid, &self.data_dir) {
            tracing::warn!(pid, "postmaster did not exit, sending SIGKILL");
            kill(pid, "KILL");
            wait_exit(pid, Duration::from_secs(10));
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop_immediate();
        if self.auto_port {
            release_port(self.port);
        }
        for attempt in 1..=5 {
            match fs::remove_dir_all(&self.base_dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    if attempt == 5 {
                        let dir = self.base_dir.display();
                        tracing::warn!(%dir, error = %e, "could not remove temporary PostgreSQL directory");
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                _ => break,
            }
        }
    }
}

/// Find the directory holding `initdb`, `pg_ctl`, `postgres` and `psql`:
/// `$PGWARD_PG_BINDIR` if set, else `initdb` on `PATH` (symlinks resolved),
/// else the newest `/usr/lib/postgresql/<N>/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PgCtlError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        let msg = format!(
            "{BIN_DIR_ENV}={} lacks initdb, pg_ctl, postgres or psql",
            dir.display()
        );
        return Err(PgCtlError::NotFound(msg));
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        // e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb
        let real = fs::canonicalize(dir.join("initdb")).ok();
        let real_dir = real
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        if let Some(found) = [Some(dir), real_dir]
            .into_iter()
            .flatten()
            .find(|d| has_server_binaries(d))
        {
            return Ok(found);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server_binaries(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        PgCtlError::NotFound(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not on PATH nor in \
             /usr/lib/postgresql/*/bin; install the postgresql package"
                .to_string(),
        )
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "psql"]
        .iter()
        .all(|b| fs::metadata(dir.join(b)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

fn validate(opts: &PgOptions) -> Result<(), PgCtlError> {
    let bad = |msg: String| Err(PgCtlError::InvalidOption(msg));
    if opts.superuser.is_empty() || opts.superuser.contains('\0') {
        return bad("superuser must be a non-empty name".into());
    }
    if opts.superuser_password.contains(['\n', '\r', '\0']) {
        return bad("superuser_password must not contain line breaks or NUL".into());
    }
    let auth = &opts.host_auth;
    if auth.is_empty() || !auth.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return bad(format!("host_auth {auth:?} is not an auth method"));
    }
    if opts.port == Some(0) {
        return bad("port 0: use None to pick a free port".into());
    }
    for (key, value) in &opts.extra_conf {
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if !key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !key.chars().all(name_char)
        {
            return bad(format!("extra_conf key {key:?} is not a setting name"));
        }
        if key.eq_ignore_ascii_case("port") || key.eq_ignore_ascii_case("unix_socket_directories") {
            return bad(format!(
                "extra_conf must not set {key} (use PgOptions::port)"
            ));
        }
        if value.contains(['\n', '\r', '\0']) {
            return bad(format!(
                "extra_conf value for {key} contains a line break or NUL"
            ));
        }
    }
    Ok(())
}

/// A `postgresql.conf` value: kept as is when already single-quoted,
/// otherwise quoted (every setting type accepts a quoted value).
fn conf_value(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('\'', "''");
    if s.contains('\\') {
        format!("E'{escaped}'")
    } else {
        format!("'{escaped}'")
    }
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A fresh directory for one server, reachable by (and, as root, owned by)
/// the OS user the server runs as.
fn create_temp_dir(owner: Option<(u32, u32)>) -> Result<PathBuf, PgCtlError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let enterable = |dir: &Path| {
        let mut test = command("test", true);
        test.arg("-x")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        test.status().is_ok_and(|s| s.success())
    };
    let mut tmp = std::env::temp_dir();
    if owner.is_some() && !enterable(&tmp) {
        tracing::warn!(tmp = %tmp.display(), "temporary directory not accessible to OS user {PG_USER}, using /tmp");
        tmp = PathBuf::from("/tmp");
        if !enterable(&tmp) {
            let msg = format!("/tmp is not accessible to OS user {PG_USER}; set TMPDIR");
            return Err(PgCtlError::InvalidOption(msg));
        }
    }
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("pgward-pg-{}-{n}", std::process::id()));
        let s = dir.to_string_lossy();
        let socket_len = dir.join(format!(".s.PGSQL.{}", u16::MAX)).as_os_str().len();
        if s.contains([',', '"', '\'', '\\'])
            || s.contains(char::is_whitespace)
            || socket_len > MAX_SOCKET_PATH
        {
            let msg = format!("temporary directory {s:?} is unusable for a unix socket (too long or special characters); set TMPDIR");
            return Err(PgCtlError::InvalidOption(msg));
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
        let setup = || -> io::Result<()> {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            owner.map_or(Ok(()), |(uid, gid)| chown(&dir, Some(uid), Some(gid)))
        };
        if let Err(e) = setup() {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        return Ok(dir);
    }
}

/// Ports handed to live servers of this process, so that two servers started
/// at the same time never get the same one.
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn pick_free_port() -> Result<u16, PgCtlError> {
    let mut used = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..50 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if used.insert(port) {
            return Ok(port);
        }
    }
    Err(PgCtlError::Start("could not find a free TCP port".into()))
}

fn release_port(port: u16) {
    PORTS_IN_USE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&port);
}

// ---- processes -------------------------------------------------------------

fn is_root() -> io::Result<bool> {
    Ok(fs::metadata("/proc/self")?.uid() == 0)
}

/// uid and gid of the `postgres` OS user, from `id`.
fn pg_user_ids() -> Result<(u32, u32), PgCtlError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, PG_USER])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then_some(())?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    id("-u").zip(id("-g")).ok_or_else(|| {
        PgCtlError::NotFound(format!(
            "OS user {PG_USER:?} (needed to run PostgreSQL as root); install the postgresql package"
        ))
    })
}

/// `program`, run as the `postgres` OS user (via `runuser`) if `as_pg_user`,
/// without the caller's `PG*` variables and in the C locale.
fn command(program: impl AsRef<OsStr>, as_pg_user: bool) -> Command {
    let mut cmd = if as_pg_user {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", PG_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C").env("LANG", "C");
    cmd
}

/// Run `cmd` to completion, feeding it `stdin`; returns its stdout if it
/// succeeded. After `timeout` it gets SIGTERM (which `runuser` passes on),
/// then SIGKILL. Programs must not leave children holding its stdout/stderr
/// (`pg_ctl` redirects the server's to the `-l` file).
fn run(
    what: &'static str,
    mut cmd: Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String, PgCtlError> {
    tracing::debug!(cmd = ?cmd, "running {what}");
    let input = if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{what}: cannot run {:?}: {e}", cmd.get_program()),
        )
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin.map(str::to_owned), child.stdin.take()) {
        // A closed pipe just means the program stopped reading.
        thread::spawn(move || pipe.write_all(input.as_bytes()));
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(out) = rx.recv_timeout(timeout) else {
        kill(pid, "TERM");
        if rx.recv_timeout(Duration::from_secs(5)).is_err() {
            kill(pid, "KILL");
        }
        return Err(PgCtlError::Timeout { what, timeout });
    };
    let out = out?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let message = if out.stderr.trim_ascii().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let stderr = String::from_utf8_lossy(message).trim_end().to_string();
    Err(PgCtlError::Command {
        what,
        status: out.status,
        stderr,
    })
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = status {
        tracing::warn!(pid, error = %e, "could not run kill");
    }
}

/// Whether `pid` exists and is not a zombie (exited, not yet reaped).
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        state.is_some_and(|s| s != "Z" && s != "X")
    })
}

fn wait_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `pid` is a postgres process serving `data_dir` (guards against
/// killing an unrelated process that reused the pid).
fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = data_dir.as_os_str().as_encoded_bytes();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    (name == b"postgres" || name == b"postmaster")
        && !needle.is_empty()
        && cmdline.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sql` over TCP as `user` (psql run as the current OS user).
    fn tcp(pg: &TempPostgres, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out = command(pg.bin_dir().join("psql"), false)
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                pg.host(),
                "-U",
                user,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .args(["-p", &pg.port().to_string()])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    }

    #[test]
    fn lifecycle() {
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        let base = pg.socket_dir().to_path_buf();
        assert!(pg.data_dir().join("PG_VERSION").exists());
        assert!(base.join(format!(".s.PGSQL.{}", pg.port())).exists());
        let sql = |s: &str| pg.psql("postgres", s).unwrap().trim().to_string();
        assert_eq!(sql("show max_connections"), "300");
        assert_eq!(sql("show fsync"), "off");
        if is_root().unwrap() {
            assert_eq!(sql("\\! id -un"), "postgres");
        }
        let several = "create role app login password 'app''s pw';\nselect 2;\nselect 3;";
        assert_eq!(sql(several), "2\n3");
        match pg.psql("postgres", "select * from no_such_table") {
            Err(PgCtlError::Command {
                what: "psql",
                stderr,
                ..
            }) => {
                assert!(stderr.contains("no_such_table"), "{stderr}")
            }
            other => panic!("expected a psql error, got {other:?}"),
        }
        assert_eq!(
            tcp(&pg, "app", "app's pw", "select current_user"),
            Ok("app".into())
        );
        assert_eq!(tcp(&pg, "postgres", "postgres", "select 1"), Ok("1".into()));
        let wrong = tcp(&pg, "app", "nope", "select 1").unwrap_err();
        assert!(wrong.contains("password authentication failed"), "{wrong}");
        assert!(
            sql("select passwd from pg_shadow where usename = 'app'").starts_with("SCRAM-SHA-256$")
        );
        let pid = pg.pid().unwrap();
        drop(pg);
        assert!(!base.exists(), "{} still exists", base.display());
        assert!(!process_alive(pid));
    }

    #[test]
    fn stop_start_again_restart() {
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        let port = pg.port();
        pg.psql("postgres", "create database keep").unwrap();
        let pid1 = pg.pid().unwrap();
        pg.stop().unwrap();
        assert!(!process_alive(pid1));
        assert!(pg.psql("postgres", "select 1").is_err());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());

        pg.start_again().unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(tcp(&pg, "postgres", "postgres", "select 1"), Ok("1".into()));

        let pid2 = pg.pid().unwrap();
        pg.restart().unwrap();
        assert_ne!(pg.pid(), Some(pid2));
        assert!(!process_alive(pid2));
        let keep = "select count(*) from pg_database where datname = 'keep'";
        assert_eq!(pg.psql("postgres", keep).unwrap().trim(), "1");
        assert!(pg.log_contents().contains("ready to accept connections"));
    }

    #[test]
    fn two_at_once() {
        let handles: Vec<_> = (0..2)
            .map(|_| thread::spawn(|| TempPostgres::start(PgOptions::default()).unwrap()))
            .collect();
        let pgs: Vec<TempPostgres> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(pgs[0].port(), pgs[1].port());
        assert_ne!(pgs[0].data_dir(), pgs[1].data_dir());
        pgs[0]
            .psql("postgres", "create table only_here (x int)")
            .unwrap();
        let count = "select count(*) from pg_class where relname = 'only_here'";
        assert_eq!(pgs[0].psql("postgres", count).unwrap().trim(), "1");
        assert_eq!(pgs[1].psql("postgres", count).unwrap().trim(), "0");
        for pg in &pgs {
            assert_eq!(tcp(pg, "postgres", "postgres", "select 1"), Ok("1".into()));
        }
        let dirs: Vec<PathBuf> = pgs.iter().map(|p| p.socket_dir().to_path_buf()).collect();
        drop(pgs);
        assert!(dirs.iter().all(|d| !d.exists()));
    }

    #[test]
    fn md5_and_extra_conf() {
        let password = "s3cret'\\x";
        let pg = TempPostgres::start(PgOptions {
            superuser: "boss".into(),
            superuser_password: password.into(),
            host_auth: "md5".into(),
            extra_conf: vec![
                ("max_connections".into(), "200".into()),
                ("application_name".into(), "it's me".into()),
                ("work_mem".into(), "'8MB'".into()),
            ],
            port: None,
        })
        .unwrap();
        let sql = |s: &str| pg.psql("postgres", s).unwrap().trim().to_string();
        assert_eq!(sql("show max_connections"), "200");
        assert_eq!(sql("show work_mem"), "8MB");
        assert_eq!(sql("show password_encryption"), "md5");
        assert_eq!(sql("select current_user"), "boss");
        assert!(sql("select passwd from pg_shadow where usename = 'boss'").starts_with("md5"));
        let app_name =
            "select setting from pg_file_settings where name = 'application_name' and applied";
        assert_eq!(sql(app_name), "it's me");
        assert_eq!(
            tcp(&pg, "boss", password, "select current_user"),
            Ok("boss".into())
        );
        let hba = fs::read_to_string(pg.data_dir().join("pg_hba.conf")).unwrap();
        assert!(hba
            .lines()
            .any(|l| l.starts_with("host") && l.trim_end().ends_with("md5")));
    }
}
