//! Throwaway PostgreSQL servers for the tests and `pgward demo`.
//!
//! [`TempPostgres::start`] runs `initdb` into a fresh temporary directory and
//! `pg_ctl start -w`, so the server accepts connections when it returns: on
//! `127.0.0.1` and on a unix socket in that directory. Everything here blocks;
//! call it from `spawn_blocking` in async code.
//!
//! Invariants:
//! - One server, one temporary directory (`data/`, the socket, `postgres.log`).
//!   Drop runs `pg_ctl stop -m immediate`, waits until the postmaster process
//!   has exited, and only then removes the directory.
//! - Binaries come from `$PGWARD_PG_BINDIR`, else `initdb` on `PATH`, else the
//!   newest `/usr/lib/postgresql/<N>/bin`.
//! - Our settings live in `data/pgward.conf`, included once from
//!   `postgresql.conf`; [`PgOptions::extra_conf`] comes last, so it wins.
//! - Picked ports are distinct among this process's live servers; when the
//!   server still "could not bind", another port is tried (`PORT_ATTEMPTS`).
//! - As root, `initdb`, `pg_ctl` and `psql` run as the `postgres` OS user via
//!   `runuser`, and the temporary directory belongs to that user.
//! - No `unsafe`, no libc: the uid comes from `/proc/self` and `id`, and
//!   signals are sent with the `kill` command.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use md5::{Digest, Md5};

/// Environment variable naming the directory with `initdb`, `pg_ctl`,
/// `postgres` and `psql`; it is checked before `PATH`.
pub const BIN_DIR_ENV: &str = "PGWARD_PG_BINDIR";

const HOST: &str = "127.0.0.1";
/// The OS user the server runs as when we are root.
const PG_USER: &str = "postgres";
/// Seconds `pg_ctl -w` waits for the server.
const PG_CTL_WAIT: &str = "60";
/// Limit for any one command (`initdb`, `pg_ctl`, `psql`).
const CMD_TIMEOUT: Duration = Duration::from_secs(300);
const PORT_ATTEMPTS: usize = 5;

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
    /// A command did not finish in time and was terminated.
    #[error("{what} timed out after {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    /// The server did not come up (e.g. no free port).
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
    /// `password_encryption` is `md5` too and, unless `extra_conf` sets
    /// `password_encryption`, the superuser's password is stored as an MD5
    /// hash, so that clients really go through MD5 authentication.
    pub host_auth: String,
    /// Extra `postgresql.conf` settings, written after the defaults so they
    /// override them (e.g. `("max_connections", "200")`). Values are quoted
    /// unless already in single quotes. `port` and `unix_socket_directories`
    /// are rejected.
    pub extra_conf: Vec<(String, String)>,
    /// TCP port; `None` picks a free one.
    pub port: Option<u16>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            superuser: "postgres".into(),
            superuser_password: "postgres".into(),
            host_auth: "scram-sha-256".into(),
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
    /// The temporary directory: `data/`, the unix socket and `postgres.log`.
    base_dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    /// `port` was picked by us and is reserved in [`ports_in_use`].
    auto_port: bool,
    /// uid and gid of the `postgres` OS user when we run as root.
    owner: Option<(u32, u32)>,
}

impl TempPostgres {
    /// Create, configure and start a server; returns once it accepts
    /// connections.
    pub fn start(opts: PgOptions) -> Result<TempPostgres, PgCtlError> {
        validate(&opts)?;
        let bin_dir = find_bin_dir()?;
        let root = fs::metadata("/proc/self")?.uid() == 0;
        let owner = if root { Some(pg_user_ids()?) } else { None };
        let base_dir = create_temp_dir(root)?;
        let mut pg = TempPostgres {
            data_dir: base_dir.join("data"),
            base_dir,
            bin_dir,
            port: opts.port.unwrap_or(0),
            auto_port: opts.port.is_none(),
            opts,
            owner,
        };
        // From here on, an early return drops `pg`, which cleans up.
        fs::set_permissions(&pg.base_dir, fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = owner {
            chown(&pg.base_dir, Some(uid), Some(gid))?;
        }
        if pg.auto_port {
            pg.port = pick_free_port()?;
        }
        pg.initdb()?;
        for attempt in 1.. {
            pg.write_conf()?;
            let log_len = pg.log_contents().len();
            let Err(e) = pg.start_again() else { break };
            let log = pg.log_contents();
            let new_log = log.get(log_len..).unwrap_or(&log);
            if !pg.auto_port || attempt == PORT_ATTEMPTS || !new_log.contains("could not bind") {
                return Err(e);
            }
            tracing::debug!(port = pg.port, error = %e, "port taken, retrying");
            let taken = std::mem::replace(&mut pg.port, pick_free_port()?);
            ports_in_use().remove(&taken);
        }
        let dir = pg.base_dir.display();
        tracing::info!(port = pg.port, %dir, "temporary PostgreSQL started");
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
        run("psql", cmd, Some(sql))
    }

    /// Stop the server (`pg_ctl stop -m fast`) and wait for it to exit.
    pub fn stop(&self) -> Result<(), PgCtlError> {
        self.stop_with("fast")
    }

    /// Start the server (again, after [`stop`](Self::stop)) on the same port.
    pub fn start_again(&self) -> Result<(), PgCtlError> {
        let result = self.pg_ctl("start", None);
        if result.is_err() && self.pid().is_some() {
            let _ = self.stop_with("immediate"); // leave nothing half-started
        }
        result
    }

    /// Restart the server (`pg_ctl restart -m fast`).
    pub fn restart(&self) -> Result<(), PgCtlError> {
        let old = self.pid();
        self.pg_ctl("restart", Some("fast"))?;
        // pg_ctl waited for the old pid file to go, not for the process.
        if let Some(pid) = old.filter(|&pid| self.pid() != Some(pid)) {
            wait_gone(pid);
        }
        Ok(())
    }

    /// A streaming standby of this server (`pg_basebackup -R` over the unix socket, as the
    /// superuser), started on a port of its own; same options.
    pub fn standby(&self) -> Result<TempPostgres, PgCtlError> {
        let base_dir = create_temp_dir(self.owner.is_some())?;
        let sb = TempPostgres {
            opts: PgOptions {
                port: None,
                ..self.opts.clone()
            },
            bin_dir: self.bin_dir.clone(),
            data_dir: base_dir.join("data"),
            base_dir,
            port: pick_free_port()?,
            auto_port: true,
            owner: self.owner,
        };
        fs::set_permissions(&sb.base_dir, fs::Permissions::from_mode(0o755))?;
        if let Some((uid, gid)) = self.owner {
            chown(&sb.base_dir, Some(uid), Some(gid))?;
        }
        let mut cmd = sb.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&sb.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-h"])
            .arg(&self.base_dir)
            .args(["-p", &self.port.to_string(), "-U", &self.opts.superuser]);
        run("pg_basebackup", cmd, None)?;
        sb.write_conf()?; // this port and socket directory
        sb.start_again()?;
        tracing::info!(
            port = sb.port,
            primary = self.port,
            "temporary standby started"
        );
        Ok(sb)
    }

    /// Promote a standby (`pg_ctl promote -w`): returns once it accepts writes.
    pub fn promote(&self) -> Result<(), PgCtlError> {
        self.pg_ctl("promote", None)
    }

    /// Stop at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) -> Result<(), PgCtlError> {
        self.stop_with("immediate")
    }

    /// Everything the server has logged so far (empty if unreadable).
    pub fn log_contents(&self) -> String {
        let log = fs::read(self.base_dir.join("postgres.log")).unwrap_or_default();
        String::from_utf8_lossy(&log).into_owned()
    }

    /// A PostgreSQL program, run as the right OS user in `base_dir`.
    fn command(&self, program: &str) -> Command {
        let mut cmd = command(self.bin_dir.join(program), self.owner.is_some());
        cmd.current_dir(&self.base_dir);
        cmd
    }

    fn initdb(&self) -> Result<(), PgCtlError> {
        let (user, password) = (&self.opts.superuser, &self.opts.superuser_password);
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args(["-U", user, "-E", "UTF8", "--locale=C", "--no-sync"]);
        let auth_host = format!("--auth-host={}", self.opts.host_auth);
        cmd.args(["--auth-local=trust", &auth_host]);
        let pwfile = self.base_dir.join("pwfile");
        if !password.is_empty() {
            let conf = &self.opts.extra_conf;
            let stored = if self.opts.host_auth == "md5"
                && !conf
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password_encryption"))
            {
                // An MD5 hash is stored as is, so clients must use MD5 auth.
                let hash = Md5::digest(format!("{password}{user}"));
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("md5{hex}")
            } else {
                password.clone()
            };
            self.write_owned(&pwfile, &format!("{stored}\n"))?;
            cmd.arg("--pwfile").arg(&pwfile);
        }
        let result = run("initdb", cmd, None);
        let _ = fs::remove_file(&pwfile);
        result?;
        let main_conf = self.data_dir.join("postgresql.conf");
        let mut main_conf = fs::OpenOptions::new().append(true).open(main_conf)?;
        Ok(writeln!(main_conf, "include 'pgward.conf'")?)
    }

    /// Write our settings to `pgward.conf` in the data directory.
    fn write_conf(&self) -> Result<(), PgCtlError> {
        let mut conf = format!(
            "listen_addresses = '{HOST}'\nport = {}\nunix_socket_directories = {}\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n",
            self.port,
            conf_value(&self.base_dir.to_string_lossy()),
        );
        if self.opts.host_auth == "md5" {
            conf.push_str("password_encryption = md5\n");
        }
        for (key, value) in &self.opts.extra_conf {
            conf += &format!("{key} = {}\n", conf_value(value));
        }
        self.write_owned(&self.data_dir.join("pgward.conf"), &conf)
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

    /// `pg_ctl <action> -w [-m <mode>]`, logging to `postgres.log`; a failure
    /// carries the end of that log.
    fn pg_ctl(&self, action: &str, mode: Option<&str>) -> Result<(), PgCtlError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args([action, "-w", "-t", PG_CTL_WAIT, "-D"])
            .arg(&self.data_dir);
        cmd.arg("-l").arg(self.base_dir.join("postgres.log"));
        cmd.args(mode.map(|mode| ["-m", mode]).into_iter().flatten());
        let mut result = run("pg_ctl", cmd, None).map(drop);
        if let Err(PgCtlError::Command { stderr, .. }) = &mut result {
            let log = self.log_contents();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            *stderr = format!("{stderr}\nserver log:\n{tail}");
        }
        result
    }

    /// `pg_ctl stop -m <mode>`, then wait until the postmaster has exited.
    fn stop_with(&self, mode: &str) -> Result<(), PgCtlError> {
        let pid = self.pid();
        let result = self.pg_ctl("stop", Some(mode));
        if let Some(pid) = pid {
            wait_gone(pid);
        }
        result
    }

    /// The postmaster's pid, from `postmaster.pid`.
    fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.pid().is_some() {
            if let Err(e) = self.stop_with("immediate") {
                tracing::warn!(error = %e, "could not stop temporary PostgreSQL");
            }
        }
        if self.auto_port {
            ports_in_use().remove(&self.port);
        }
        if let Err(e) = fs::remove_dir_all(&self.base_dir) {
            let dir = self.base_dir.display();
            tracing::warn!(%dir, error = %e, "could not remove temporary PostgreSQL");
        }
    }
}

/// Find the directory holding `initdb`, `pg_ctl`, `postgres` and `psql`:
/// `$PGWARD_PG_BINDIR` if set, else `initdb` on `PATH` (symlinks resolved),
/// else the newest `/usr/lib/postgresql/<N>/bin`.
pub fn find_bin_dir() -> Result<PathBuf, PgCtlError> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let msg = format!("{BIN_DIR_ENV}: no PostgreSQL binaries in {}", dir.display());
        return has_server_binaries(&dir)
            .then_some(dir)
            .ok_or(PgCtlError::NotFound(msg));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).flat_map(|dir| {
        // e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb
        let real = fs::canonicalize(dir.join("initdb")).ok();
        let real_dir = real.and_then(|p| Some(p.parent()?.to_path_buf()));
        [Some(dir), real_dir].into_iter().flatten()
    });
    let entries = fs::read_dir("/usr/lib/postgresql").into_iter().flatten();
    let mut installed: Vec<(Vec<u32>, PathBuf)> = (entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version: Option<Vec<u32>> = name.split('.').map(|n| n.parse().ok()).collect();
            Some((version?, entry.path().join("bin")))
        })
        .collect();
    installed.sort();
    let mut candidates = on_path.chain(installed.into_iter().rev().map(|(_, bin)| bin));
    candidates
        .find(|dir| has_server_binaries(dir))
        .ok_or_else(|| {
            let msg =
                "PostgreSQL binaries (initdb, pg_ctl, postgres, psql) neither on PATH nor in \
                   /usr/lib/postgresql/*/bin; install the postgresql package";
            PgCtlError::NotFound(msg.into())
        })
}

fn has_server_binaries(dir: &Path) -> bool {
    let executable = |m: fs::Metadata| m.is_file() && m.mode() & 0o111 != 0;
    let present = |program| fs::metadata(dir.join(program)).is_ok_and(executable);
    ["initdb", "pg_ctl", "postgres", "psql"]
        .into_iter()
        .all(present)
}

fn validate(opts: &PgOptions) -> Result<(), PgCtlError> {
    let bad = |msg: String| Err(PgCtlError::InvalidOption(msg));
    let conf = opts.extra_conf.iter().flat_map(|(k, v)| [k, v]);
    let texts = [&opts.superuser, &opts.superuser_password, &opts.host_auth].into_iter();
    if let Some(text) = texts.chain(conf).find(|t| t.contains(['\n', '\r', '\0'])) {
        return bad(format!("{text:?} contains a line break or NUL"));
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    for (key, _) in &opts.extra_conf {
        let reserved = ["port", "unix_socket_directories"].contains(&&*key.to_ascii_lowercase());
        if key.is_empty() || !key.chars().all(name_char) || reserved {
            return bad(format!("extra_conf cannot set {key:?}"));
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

/// A new, empty directory for one server. As root it is made under `/tmp`
/// when `postgres` cannot enter `$TMPDIR` (e.g. one below `/root`).
fn create_temp_dir(root: bool) -> Result<PathBuf, PgCtlError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut tmp = std::env::temp_dir();
    let mut test = command("test", true);
    if root && !test.arg("-x").arg(&tmp).status().is_ok_and(|s| s.success()) {
        tmp = PathBuf::from("/tmp");
    }
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("pgward-pg-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            result => return Ok(result.map(|()| dir)?),
        }
    }
}

/// Ports picked for live servers of this process, so that servers started at
/// the same time never share one.
fn ports_in_use() -> MutexGuard<'static, BTreeSet<u16>> {
    static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn pick_free_port() -> Result<u16, PgCtlError> {
    let mut used = ports_in_use();
    for _ in 0..50 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if used.insert(port) {
            return Ok(port);
        }
    }
    Err(PgCtlError::Start("could not find a free TCP port".into()))
}

/// uid and gid of the `postgres` OS user, from `id`.
fn pg_user_ids() -> Result<(u32, u32), PgCtlError> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, PG_USER]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let msg = format!("OS user {PG_USER} (PostgreSQL cannot run as root)");
    id("-u").zip(id("-g")).ok_or(PgCtlError::NotFound(msg))
}

/// `program`, run as the `postgres` OS user (via `runuser`) if `as_pg_user`,
/// without the caller's `PG*` variables and in the C locale.
fn command(program: impl AsRef<OsStr>, as_pg_user: bool) -> Command {
    let mut cmd = Command::new(program.as_ref());
    if as_pg_user {
        cmd = Command::new("runuser");
        cmd.args(["-u", PG_USER, "--"]).arg(program);
    }
    for (key, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("PG")) {
        cmd.env_remove(key);
    }
    cmd.env("LC_ALL", "C").env("LANG", "C");
    cmd
}

/// Run `cmd` with `stdin` as its input and return its stdout if it succeeds.
/// After [`CMD_TIMEOUT`] it gets SIGTERM (which `runuser` passes on). The
/// program must not leave children holding its stdout/stderr (`pg_ctl` sends
/// the server's output to the `-l` file).
fn run(what: &'static str, mut cmd: Command, stdin: Option<&str>) -> Result<String, PgCtlError> {
    tracing::debug!(?cmd, "running {what}");
    let input = stdin.map_or(Stdio::null(), |_| Stdio::piped());
    cmd.stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {program:?}: {e}")))?;
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin.map(str::to_owned)) {
        // If the program exits early, the write fails; that is fine.
        thread::spawn(move || pipe.write_all(input.as_bytes()));
    }
    let (pid, timeout, (tx, rx)) = (child.id(), CMD_TIMEOUT, mpsc::channel());
    thread::spawn(move || tx.send(child.wait_with_output()));
    let out = rx.recv_timeout(timeout).map_err(|_| {
        kill(pid, "TERM");
        PgCtlError::Timeout { what, timeout }
    })??;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        let status = out.status;
        return Err(PgCtlError::Command {
            what,
            status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kill(pid: u32, signal: &str) {
    let args = [format!("-{signal}"), pid.to_string()];
    let _ = Command::new("kill").args(args).status();
}

/// Whether `pid` exists and is not a zombie (exited, not yet reaped).
fn process_alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised program name.
    let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
    !state.is_empty() && !state.starts_with(['Z', 'X'])
}

/// Wait until `pid` has exited; SIGKILL it if that takes over 30 s.
fn wait_gone(pid: u32) {
    for tick in 0..4000 {
        if !process_alive(pid) {
            return;
        }
        if tick == 3000 {
            tracing::warn!(pid, "postmaster did not exit, sending SIGKILL");
            kill(pid, "KILL");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(pg: &TempPostgres, sql: &str) -> String {
        pg.psql("postgres", sql).unwrap().trim().to_string()
    }

    /// `sql` over TCP as `user`, psql running as the current OS user.
    fn tcp(pg: &TempPostgres, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let mut psql = command(pg.bin_dir().join("psql"), false);
        let port = pg.port().to_string();
        psql.args(["-XAt", "-h", pg.host(), "-p", &port, "-U", user]);
        let out = psql
            .args(["-c", sql, "postgres"])
            .env("PGPASSWORD", password);
        let out = out.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        let ok = out.status.success();
        ok.then(|| text(&out.stdout))
            .ok_or_else(|| text(&out.stderr))
    }

    #[test]
    fn lifecycle() {
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        let base = pg.socket_dir().to_path_buf();
        assert!(base.join(format!(".s.PGSQL.{}", pg.port())).exists());
        assert_eq!(sql(&pg, "show max_connections"), "300");
        if fs::metadata("/proc/self").unwrap().uid() == 0 {
            assert_eq!(sql(&pg, "\\! id -un"), "postgres");
        }
        let several = "create role app login password 'app''s pw';\nselect 2;\nselect 3;";
        assert_eq!(sql(&pg, several), "2\n3");
        let err = pg
            .psql("postgres", "select * from no_such_table")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("psql failed") && msg.contains("no_such_table"),
            "{msg}"
        );
        assert_eq!(
            tcp(&pg, "app", "app's pw", "select current_user"),
            Ok("app".into())
        );
        let wrong = tcp(&pg, "app", "nope", "select 1").unwrap_err();
        assert!(wrong.contains("password authentication failed"), "{wrong}");
        let pid = pg.pid().unwrap();
        drop(pg);
        assert!(!base.exists() && !process_alive(pid));
    }

    #[test]
    fn stop_start_again_restart() {
        let pg = TempPostgres::start(PgOptions::default()).unwrap();
        sql(&pg, "create database keep");
        let (port, pid1) = (pg.port(), pg.pid().unwrap());
        pg.stop().unwrap();
        assert!(!process_alive(pid1) && pg.psql("postgres", "select 1").is_err());
        pg.start_again().unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(tcp(&pg, "postgres", "postgres", "select 1"), Ok("1".into()));
        let pid2 = pg.pid().unwrap();
        pg.restart().unwrap();
        assert!(pg.pid() != Some(pid2) && !process_alive(pid2));
        let keep = "select count(*) from pg_database where datname = 'keep'";
        assert_eq!(sql(&pg, keep), "1");
        assert!(pg.log_contents().contains("ready to accept connections"));
    }

    #[test]
    fn two_at_once() {
        let start = || TempPostgres::start(PgOptions::default()).unwrap();
        let (a, b) = (thread::spawn(start), thread::spawn(start));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_ne!(a.port(), b.port());
        sql(&a, "create table only_here (x int)");
        let count = "select count(*) from pg_class where relname = 'only_here'";
        assert_eq!((sql(&a, count), sql(&b, count)), ("1".into(), "0".into()));
        assert_eq!(tcp(&b, "postgres", "postgres", "select 1"), Ok("1".into()));
    }

    #[test]
    fn md5_and_extra_conf() {
        let pg = TempPostgres::start(PgOptions {
            superuser: "boss".into(),
            superuser_password: "s3cret'\\x".into(),
            host_auth: "md5".into(),
            extra_conf: vec![
                ("max_connections".into(), "200".into()),
                ("cluster_name".into(), "it's me".into()),
                ("work_mem".into(), "'8MB'".into()),
            ],
            port: None,
        })
        .unwrap();
        assert_eq!(sql(&pg, "show max_connections"), "200");
        assert_eq!(sql(&pg, "show work_mem"), "8MB");
        assert_eq!(sql(&pg, "show cluster_name"), "it's me");
        assert_eq!(sql(&pg, "show password_encryption"), "md5");
        assert!(sql(&pg, "select passwd from pg_shadow where usename = 'boss'").starts_with("md5"));
        assert_eq!(
            tcp(&pg, "boss", "s3cret'\\x", "select current_user"),
            Ok("boss".into())
        );
        let bad = PgOptions {
            extra_conf: vec![("port".into(), "1".into())],
            ..PgOptions::default()
        };
        assert!(matches!(
            TempPostgres::start(bad),
            Err(PgCtlError::InvalidOption(_))
        ));
    }
}
