#![allow(unsafe_code)]
//! Throwaway PostgreSQL servers built from the installed binaries.
//!
//! [`TempPostgres::start`] runs `initdb` into a fresh temporary directory,
//! starts the server with `pg_ctl` on `127.0.0.1` (and a unix socket in the
//! same temporary directory), and returns once it accepts connections.
//! Dropping the value stops the server, waits for the postmaster to exit and
//! removes the directory.
//!
//! Used by the integration tests and by `pgward demo`. Everything here is
//! synchronous (`std::process`); call it from `spawn_blocking` in async code.
//!
//! When running as root, `initdb`, `pg_ctl` and `psql` are run as the
//! `postgres` OS user (PostgreSQL refuses to run as root), and the temporary
//! directory is owned by that user.

use std::collections::HashSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that, when set, names the directory holding
/// `initdb`, `pg_ctl`, `postgres` and `psql`; it is checked before `PATH`.
pub const BIN_DIR_ENV: &str = "PGWARD_PG_BINDIR";

const HOST: &str = "127.0.0.1";
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// Outer limit for `pg_ctl`; `pg_ctl -w` itself gives up after `-t` seconds.
const PG_CTL_WAIT_SECS: u32 = 60;
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS as u64 + 30);
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
    /// Temporary directory: holds `data/`, the unix socket and the log.
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    /// The port was picked by us and is in `PORTS_IN_USE`.
    auto_port: bool,
    /// `Some` when commands must run as another OS user (we are root).
    run_as: Option<RunAs>,
    /// Postmaster pid of the last successful start.
    postmaster_pid: Mutex<Option<i32>>,
}

impl TempPostgres {
    /// Create, configure and start a server; returns once it accepts
    /// connections on TCP.
    pub fn start(opts: PgOptions) -> Result<TempPostgres, PgCtlError> {
        validate(&opts)?;
        let bin_dir = find_bin_dir()?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(RunAs::lookup("postgres")?)
        } else {
            None
        };
        let base_dir = create_temp_dir(run_as.as_ref())?;
        let (port, auto_port) = match opts.port {
            Some(p) => (p, false),
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
            run_as,
            postmaster_pid: Mutex::new(None),
        };
        // From here on, an early return drops `pg`, which cleans up.
        let socket_path = pg.base_dir.join(format!(".s.PGSQL.{}", u16::MAX));
        if socket_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PgCtlError::InvalidOption(format!(
                "temporary directory path {} is too long for a unix socket; set TMPDIR",
                pg.base_dir.display()
            )));
        }
        pg.initdb()?;
        pg.write_conf()?;

        let mut attempt = 1;
        loop {
            let log_len = fs::metadata(&pg.log_file).map(|m| m.len()).unwrap_or(0);
            match pg.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if auto_port && attempt < PORT_ATTEMPTS && pg.port_in_use_since(log_len) => {
                    tracing::debug!(port = pg.port, error = %e, "port taken, retrying");
                    release_port(pg.port);
                    pg.port = pick_free_port()?;
                    pg.write_conf()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if pg.opts.host_auth == "md5"
            && !pg.opts.superuser_password.is_empty()
            && !pg.extra_conf_sets("password_encryption")
        {
            // initdb stored the superuser password as SCRAM; store it as MD5.
            let sql = format!(
                "ALTER ROLE {} PASSWORD {};",
                quote_ident(&pg.opts.superuser),
                quote_literal(&pg.opts.superuser_password)
            );
            pg.psql("postgres", &sql)?;
        }
        tracing::info!(
            port = pg.port,
            dir = %pg.base_dir.display(),
            "temporary PostgreSQL server started"
        );
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
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(&self.opts.superuser)
            .arg("-d")
            .arg(db)
            .args(["-f", "-"]);
        let out = run("psql", cmd, Some(sql.as_bytes().to_vec()), PSQL_TIMEOUT)?;
        Ok(out.check("psql")?.stdout)
    }

    /// Stop the server (`pg_ctl stop -m fast -w`).
    pub fn stop(&self) -> Result<(), PgCtlError> {
        let pid = self.current_pid();
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", "fast"]);
        run("pg_ctl stop", cmd, None, PG_CTL_TIMEOUT)?.check("pg_ctl stop")?;
        if let Some(pid) = pid {
            self.wait_gone(pid, Duration::from_secs(30));
        }
        *self
            .postmaster_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Start the server again after [`stop`](Self::stop), on the same port.
    pub fn start_again(&self) -> Result<(), PgCtlError> {
        self.pg_ctl_start()
    }

    /// Restart the server (`pg_ctl restart -m fast -w`).
    pub fn restart(&self) -> Result<(), PgCtlError> {
        let old_pid = self.current_pid();
        let mut cmd = self.pg_ctl("restart");
        cmd.args(["-m", "fast", "-l"]).arg(&self.log_file);
        run("pg_ctl restart", cmd, None, PG_CTL_TIMEOUT)
            .and_then(|o| o.check("pg_ctl restart"))
            .map_err(|e| self.with_log_tail(e))?;
        // pg_ctl waited for the old postmaster's pid file to go; make sure
        // the process itself is gone too.
        if let Some(pid) = old_pid {
            if self.read_pid_file() != Some(pid) {
                self.wait_gone(pid, Duration::from_secs(30));
            }
        }
        self.after_start()
    }

    /// Everything the server has logged so far (empty if unreadable).
    pub fn log_contents(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    // ---- internals -------------------------------------------------------

    fn extra_conf_sets(&self, key: &str) -> bool {
        self.opts
            .extra_conf
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(key))
    }

    /// A command for one of the PostgreSQL binaries, run as the right user,
    /// with a clean environment.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C").env("LANG", "C");
        cmd.current_dir(&self.base_dir);
        if let Some(run_as) = &self.run_as {
            cmd.env("HOME", &self.base_dir)
                .env("USER", &run_as.name)
                .env("LOGNAME", &run_as.name);
            run_as.apply(&mut cmd);
        }
        cmd
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg(action)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        cmd
    }

    fn initdb(&self) -> Result<(), PgCtlError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-U")
            .arg(&self.opts.superuser)
            .args([
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth-local=trust",
            ])
            .arg(format!("--auth-host={}", self.opts.host_auth));
        let pwfile = self.base_dir.join("pwfile");
        if !self.opts.superuser_password.is_empty() {
            self.write_owned(
                &pwfile,
                &format!("{}\n", self.opts.superuser_password),
                0o600,
            )?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        let started = Instant::now();
        let res = run("initdb", cmd, None, INITDB_TIMEOUT).and_then(|o| o.check("initdb"));
        let _ = fs::remove_file(&pwfile);
        res?;
        tracing::debug!(elapsed = ?started.elapsed(), "initdb done");
        Ok(())
    }

    /// Write `pgward.conf` (our settings plus `extra_conf`) into the data
    /// directory and include it from `postgresql.conf` (once).
    fn write_conf(&self) -> Result<(), PgCtlError> {
        let mut conf = String::from("# written by pgward::pgctl\n");
        let mut set = |k: &str, v: &str| {
            let _ = writeln!(conf, "{k} = {}", conf_value(v));
        };
        set("listen_addresses", HOST);
        set("port", &self.port.to_string());
        set("unix_socket_directories", &self.base_dir.to_string_lossy());
        set("fsync", "off");
        set("synchronous_commit", "off");
        set("full_page_writes", "off");
        set("max_connections", "300");
        if self.opts.host_auth == "md5" {
            set("password_encryption", "md5");
        }
        for (k, v) in &self.opts.extra_conf {
            set(k, v);
        }
        self.write_owned(&self.data_dir.join("pgward.conf"), &conf, 0o600)?;

        let main_conf = self.data_dir.join("postgresql.conf");
        let include = "include 'pgward.conf'";
        let text = fs::read_to_string(&main_conf)?;
        if !text.lines().any(|l| l.trim() == include) {
            let mut f = fs::OpenOptions::new().append(true).open(&main_conf)?;
            writeln!(f, "\n{include}")?;
        }
        Ok(())
    }

    /// Write a file and make it owned by the server's user.
    fn write_owned(&self, path: &Path, contents: &str, mode: u32) -> Result<(), PgCtlError> {
        fs::write(path, contents)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        if let Some(run_as) = &self.run_as {
            std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), PgCtlError> {
        let mut cmd = self.pg_ctl("start");
        cmd.arg("-l").arg(&self.log_file);
        let res =
            run("pg_ctl start", cmd, None, PG_CTL_TIMEOUT).and_then(|o| o.check("pg_ctl start"));
        if let Err(e) = res {
            // Make sure nothing half-started is left behind.
            self.stop_immediate();
            return Err(self.with_log_tail(e));
        }
        self.after_start()
    }

    /// Record the postmaster pid and check that TCP connections are accepted.
    fn after_start(&self) -> Result<(), PgCtlError> {
        if let Some(pid) = self.read_pid_file() {
            *self
                .postmaster_pid
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(pid);
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(PgCtlError::Start(format!(
                        "server does not accept TCP connections on {addr}: {e}\n{}",
                        log_tail(&self.log_contents())
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Whether the log written after byte `since` says the port was taken.
    fn port_in_use_since(&self, since: u64) -> bool {
        let log = fs::read(&self.log_file).unwrap_or_default();
        let new = log.get(since as usize..).unwrap_or(&log);
        let new = String::from_utf8_lossy(new);
        new.contains("Address already in use") || new.contains("could not bind")
    }

    fn with_log_tail(&self, e: PgCtlError) -> PgCtlError {
        match e {
            PgCtlError::Command {
                what,
                status,
                mut stderr,
            } => {
                let tail = log_tail(&self.log_contents());
                if !tail.is_empty() {
                    stderr.push_str("\nserver log:\n");
                    stderr.push_str(&tail);
                }
                PgCtlError::Command {
                    what,
                    status,
                    stderr,
                }
            }
            other => other,
        }
    }

    fn read_pid_file(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The running postmaster's pid, from its pid file or the last start.
    fn current_pid(&self) -> Option<i32> {
        self.read_pid_file().or(*self
            .postmaster_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner()))
    }

    /// `pg_ctl stop -m immediate` and wait for the postmaster to exit,
    /// ignoring errors; used on failure and drop.
    fn stop_immediate(&self) {
        let Some(pid) = self.current_pid() else {
            return;
        };
        if self.data_dir.join("postmaster.pid").exists() {
            let mut cmd = self.pg_ctl("stop");
            cmd.args(["-m", "immediate"]);
            if let Err(e) =
                run("pg_ctl stop", cmd, None, PG_CTL_TIMEOUT).and_then(|o| o.check("pg_ctl stop"))
            {
                tracing::debug!(error = %e, "pg_ctl stop -m immediate failed");
            }
        }
        self.wait_gone(pid, Duration::from_secs(20));
        *self
            .postmaster_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Wait until postmaster `pid` has exited; kill it (only if it is still
    /// our postmaster) when it takes longer than `timeout`.
    fn wait_gone(&self, pid: i32, timeout: Duration) {
        if wait_exit(pid, timeout) {
            return;
        }
        if is_our_postmaster(pid, &self.data_dir) {
            tracing::warn!(pid, "postmaster did not exit, sending SIGKILL");
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
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
        for attempt in 0..5 {
            match fs::remove_dir_all(&self.base_dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => {
                    if attempt == 4 {
                        tracing::warn!(
                            dir = %self.base_dir.display(),
                            error = %e,
                            "could not remove temporary PostgreSQL directory"
                        );
                    }
                    thread::sleep(Duration::from_millis(100));
                }
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
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(PgCtlError::NotFound(format!(
                "{BIN_DIR_ENV}={} does not contain initdb, pg_ctl, postgres and psql",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            // e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb
            if let Some(real_dir) = fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                if has_server_binaries(&real_dir) {
                    return Ok(real_dir);
                }
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(version) = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_server_binaries(&bin) {
                versions.push((version, bin));
            }
        }
    }
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
        .all(|b| is_executable(&dir.join(b)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn validate(opts: &PgOptions) -> Result<(), PgCtlError> {
    let bad = |msg: String| Err(PgCtlError::InvalidOption(msg));
    if opts.superuser.is_empty() || opts.superuser.contains('\0') {
        return bad("superuser must be a non-empty name".into());
    }
    if opts.superuser_password.contains(['\n', '\r', '\0']) {
        return bad("superuser_password must not contain line breaks or NUL".into());
    }
    if opts.host_auth.is_empty()
        || !opts
            .host_auth
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return bad(format!(
            "host_auth {:?} is not an auth method",
            opts.host_auth
        ));
    }
    if opts.port == Some(0) {
        return bad("port 0: use None to pick a free port".into());
    }
    for (key, value) in &opts.extra_conf {
        let ok_key = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !ok_key {
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
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---- temporary directories and ports --------------------------------------

fn create_temp_dir(run_as: Option<&RunAs>) -> Result<PathBuf, PgCtlError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tmp = std::env::temp_dir();
    if let Some(run_as) = run_as {
        if !run_as.can_traverse(&tmp) {
            let fallback = PathBuf::from("/tmp");
            if !run_as.can_traverse(&fallback) {
                return Err(PgCtlError::InvalidOption(format!(
                    "temporary directory {} is not accessible to OS user {}; set TMPDIR",
                    tmp.display(),
                    run_as.name
                )));
            }
            tracing::warn!(
                tmp = %tmp.display(),
                "temporary directory not accessible to OS user {}, using /tmp",
                run_as.name
            );
            tmp = fallback;
        }
    }
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!("pgward-pg-{pid}-{n}-{nanos}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                let setup = || -> Result<(), PgCtlError> {
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                    if let Some(run_as) = run_as {
                        std::os::unix::fs::chown(&dir, Some(run_as.uid), Some(run_as.gid))?;
                    }
                    let s = dir.to_string_lossy();
                    if s.contains([',', '"', '\'', '\\']) || s.chars().any(char::is_whitespace) {
                        return Err(PgCtlError::InvalidOption(format!(
                            "temporary directory {s:?} has characters unusable in \
                             unix_socket_directories; set TMPDIR"
                        )));
                    }
                    Ok(())
                };
                if let Err(e) = setup() {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ports handed to live servers of this process, so that two servers started
/// at the same time never get the same one.
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

#[cfg(test)]
thread_local! {
    /// Ports `pick_free_port` hands out first (tests of the retry path).
    static FORCED_PORTS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn pick_free_port() -> Result<u16, PgCtlError> {
    let mut guard = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    #[cfg(test)]
    if let Some(port) = FORCED_PORTS.with(|p| p.borrow_mut().pop()) {
        used.insert(port);
        return Ok(port);
    }
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
    let mut guard = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(used) = guard.as_mut() {
        used.remove(&port);
    }
}

// ---- processes -------------------------------------------------------------

/// The OS user to run PostgreSQL as when we are root.
#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl RunAs {
    fn lookup(name: &str) -> Result<RunAs, PgCtlError> {
        let not_found = || {
            PgCtlError::NotFound(format!(
                "OS user {name:?} (needed to run PostgreSQL as root); install the postgresql package"
            ))
        };
        let cname = CString::new(name).map_err(|_| not_found())?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return Err(not_found());
        }
        let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
        Ok(RunAs {
            name: name.to_string(),
            uid,
            gid,
            groups: supplementary_groups(&cname, gid),
        })
    }

    /// Whether this user can reach `dir` (search permission on it and every
    /// ancestor).
    fn can_traverse(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = fs::canonicalize(dir) else {
            return false;
        };
        dir.ancestors().all(|d| {
            fs::metadata(d).is_ok_and(|m| {
                let mode = m.mode();
                if m.uid() == self.uid {
                    mode & 0o100 != 0
                } else if m.gid() == self.gid || self.groups.contains(&m.gid()) {
                    mode & 0o010 != 0
                } else {
                    mode & 0o001 != 0
                }
            })
        })
    }

    /// Drop to this user in the child between fork and exec.
    fn apply(&self, cmd: &mut Command) {
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: only async-signal-safe system calls run in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn supplementary_groups(name: &CString, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut n: libc::c_int = 64;
    for _ in 0..4 {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        n = count.max(n * 2);
    }
    vec![gid]
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn supplementary_groups(_name: &CString, gid: libc::gid_t) -> Vec<libc::gid_t> {
    vec![gid]
}

struct RunOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    fn check(self, what: &'static str) -> Result<RunOutput, PgCtlError> {
        if self.status.success() {
            return Ok(self);
        }
        let mut stderr = self.stderr.trim_end().to_string();
        if stderr.is_empty() {
            stderr = self.stdout.trim_end().to_string();
        }
        Err(PgCtlError::Command {
            what,
            status: self.status,
            stderr,
        })
    }
}

/// Run a command to completion, feeding `stdin` and collecting its output,
/// killing it after `timeout`.
fn run(
    what: &'static str,
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<RunOutput, PgCtlError> {
    tracing::debug!(cmd = ?cmd, "running {what}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        let program = cmd.get_program().to_string_lossy().into_owned();
        io::Error::new(e.kind(), format!("{what}: cannot run {program}: {e}"))
    })?;

    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        thread::spawn(move || {
            // A closed pipe just means the program stopped reading.
            let _ = pipe.write_all(&input);
        });
    }
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let readers: Vec<(bool, Box<dyn Read + Send>)> = [
        child
            .stdout
            .take()
            .map(|p| (true, Box::new(p) as Box<dyn Read + Send>)),
        child
            .stderr
            .take()
            .map(|p| (false, Box::new(p) as Box<dyn Read + Send>)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let n_readers = readers.len();
    for (is_stdout, mut pipe) in readers {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((is_stdout, buf));
        });
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PgCtlError::Timeout { what, timeout });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };

    // The pipes reach EOF when every process holding them has gone; do not
    // hang if some grandchild kept them open.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let collect_deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..n_readers {
        let left = collect_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, b)) => stdout = b,
            Ok((false, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Ok(RunOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map_or(true, |state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    true
}

/// Whether `pid` is a postgres process serving `data_dir` (guards against
/// killing an unrelated process that reused the pid).
fn is_our_postmaster(pid: i32, data_dir: &Path) -> bool {
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

    /// psql as the current OS user, ignoring the caller's PG* environment.
    fn client_psql(pg: &TempPostgres) -> Command {
        let mut cmd = Command::new(pg.bin_dir().join("psql"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn tcp_psql(pg: &TempPostgres, user: &str, password: &str, sql: &str) -> std::process::Output {
        client_psql(pg)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "postgresql://{user}:{password}@{}:{}/postgres",
                pg.host(),
                pg.port()
            ))
            .args(["-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    fn assert_tcp_ok(pg: &TempPostgres, user: &str, password: &str, sql: &str, expected: &str) {
        let out = tcp_psql(pg, user, password, sql);
        assert!(
            out.status.success(),
            "psql over TCP failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            pg.log_contents()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
    }

    #[test]
    fn finds_binaries() {
        let dir = find_bin_dir().unwrap();
        assert!(has_server_binaries(&dir), "{}", dir.display());
    }

    #[test]
    fn lifecycle() {
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        let base = pg.socket_dir().to_path_buf();
        assert!(pg.data_dir().join("PG_VERSION").exists());
        assert_eq!(pg.host(), "127.0.0.1");
        assert!(base.join(format!(".s.PGSQL.{}", pg.port())).exists());
        assert_eq!(pg.psql("postgres", "select 1").unwrap().trim(), "1");
        assert_eq!(
            pg.psql("postgres", "show max_connections").unwrap().trim(),
            "300"
        );
        assert_eq!(pg.psql("postgres", "show fsync").unwrap().trim(), "off");
        if unsafe { libc::geteuid() } == 0 {
            // psql (and so initdb and pg_ctl) ran as the postgres OS user.
            let who = pg.psql("postgres", "\\! id -un; id -Gn").unwrap();
            assert_eq!(who.lines().next(), Some("postgres"));
        }

        // Several statements; results of each are printed.
        let out = pg
            .psql(
                "postgres",
                "create role app login password 'app''s pw';\ncreate database appdb owner app;\nselect 2;\nselect 3;",
            )
            .unwrap();
        assert_eq!(out.trim(), "2\n3");

        // Errors carry psql's stderr.
        match pg.psql("postgres", "select * from no_such_table") {
            Err(PgCtlError::Command { what, stderr, .. }) => {
                assert_eq!(what, "psql");
                assert!(stderr.contains("no_such_table"), "{stderr}");
            }
            other => panic!("expected a psql error, got {other:?}"),
        }

        // TCP with SCRAM.
        assert_tcp_ok(&pg, "app", "app's pw", "select current_user", "app");
        assert_tcp_ok(
            &pg,
            "postgres",
            "postgres",
            "select current_user",
            "postgres",
        );
        let wrong = tcp_psql(&pg, "app", "nope", "select 1");
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));
        assert!(pg
            .psql(
                "postgres",
                "select passwd from pg_shadow where usename = 'app'"
            )
            .unwrap()
            .starts_with("SCRAM-SHA-256$"));

        // stop / start_again on the same port.
        let port = pg.port();
        let pid1 = pg.read_pid_file().unwrap();
        pg.stop().unwrap();
        assert!(!process_alive(pid1));
        assert!(pg.psql("postgres", "select 1").is_err());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        pg.start_again().unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("postgres", "select 1").unwrap().trim(), "1");
        assert_tcp_ok(&pg, "app", "app's pw", "select current_user", "app");

        // restart: a new postmaster, data kept.
        let pid2 = pg.read_pid_file().unwrap();
        pg.restart().unwrap();
        let pid3 = pg.read_pid_file().unwrap();
        assert_ne!(pid2, pid3);
        assert!(!process_alive(pid2));
        assert_eq!(
            pg.psql(
                "postgres",
                "select count(*) from pg_database where datname = 'appdb'"
            )
            .unwrap()
            .trim(),
            "1"
        );
        assert!(pg
            .log_contents()
            .contains("database system is ready to accept connections"));

        drop(pg);
        assert!(!base.exists(), "{} still exists", base.display());
        assert!(!process_alive(pid3));
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
            assert_tcp_ok(pg, "postgres", "postgres", "select 1", "1");
        }
        let dirs: Vec<PathBuf> = pgs.iter().map(|p| p.socket_dir().to_path_buf()).collect();
        drop(pgs);
        for dir in dirs {
            assert!(!dir.exists());
        }
    }

    #[test]
    fn md5_and_extra_conf() {
        let pg = TempPostgres::start(PgOptions {
            superuser: "boss".into(),
            superuser_password: "s3cret'\\x".into(),
            host_auth: "md5".into(),
            extra_conf: vec![
                ("max_connections".into(), "200".into()),
                ("application_name".into(), "it's me".into()),
                ("work_mem".into(), "'8MB'".into()),
            ],
            port: None,
        })
        .unwrap();
        assert_eq!(
            pg.psql("postgres", "show max_connections").unwrap().trim(),
            "200"
        );
        assert_eq!(pg.psql("postgres", "show work_mem").unwrap().trim(), "8MB");
        assert_eq!(
            pg.psql("postgres", "show password_encryption")
                .unwrap()
                .trim(),
            "md5"
        );
        assert_eq!(
            pg.psql("postgres", "select current_user").unwrap().trim(),
            "boss"
        );
        assert!(pg
            .psql(
                "postgres",
                "select passwd from pg_shadow where usename = 'boss'"
            )
            .unwrap()
            .starts_with("md5"));
        assert_eq!(
            pg.psql(
                "postgres",
                "select setting from pg_file_settings where name = 'application_name' and applied"
            )
            .unwrap()
            .trim(),
            "it's me"
        );
        // The password goes through PGPASSWORD only (URL-unsafe characters).
        let out = client_psql(&pg)
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-U",
                "boss",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(pg.port().to_string())
            .args(["-c", "select current_user"])
            .env("PGPASSWORD", "s3cret'\\x")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "boss");
        let hba = fs::read_to_string(pg.data_dir().join("pg_hba.conf")).unwrap();
        assert!(hba
            .lines()
            .any(|l| l.starts_with("host") && l.trim_end().ends_with("md5")));
    }

    #[test]
    fn trust_fixed_port_and_restart_same_port() {
        let port = pick_free_port().unwrap();
        let pg = TempPostgres::start(PgOptions {
            host_auth: "trust".into(),
            superuser_password: String::new(),
            port: Some(port),
            ..PgOptions::default()
        })
        .unwrap();
        assert_eq!(pg.port(), port);
        assert_tcp_ok(&pg, "postgres", "whatever", "select 7", "7");
        // A second server on the same fixed port fails cleanly and cleans up.
        let err = TempPostgres::start(PgOptions {
            port: Some(port),
            ..PgOptions::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pg_ctl start"), "{msg}");
        // The same log lines that make start() retry with an automatic port.
        assert!(
            msg.contains("Address already in use") || msg.contains("could not bind"),
            "{msg}"
        );
    }

    #[test]
    fn retries_when_the_picked_port_is_taken() {
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = squatter.local_addr().unwrap().port();
        FORCED_PORTS.with(|p| p.borrow_mut().push(taken));
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        assert_ne!(pg.port(), taken);
        assert!(pg.log_contents().contains("could not bind"));
        assert_eq!(pg.psql("postgres", "select 1").unwrap().trim(), "1");
        assert_tcp_ok(&pg, "postgres", "postgres", "select 1", "1");
        drop(squatter);
    }

    #[test]
    fn rejects_bad_options() {
        for opts in [
            PgOptions {
                extra_conf: vec![("port".into(), "5".into())],
                ..PgOptions::default()
            },
            PgOptions {
                extra_conf: vec![("bad key".into(), "5".into())],
                ..PgOptions::default()
            },
            PgOptions {
                superuser_password: "a\nb".into(),
                ..PgOptions::default()
            },
        ] {
            assert!(matches!(
                TempPostgres::start(opts),
                Err(PgCtlError::InvalidOption(_))
            ));
        }
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_value("on"), "'on'");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value("'x'"), "'x'");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
