//! A real PgBouncer for comparison tests: found on PATH or at /usr/sbin/pgbouncer (Debian's
//! package; `PGBOUNCER` overrides), started on a free port from an ini the test writes, as
//! the `postgres` OS user when the tests run as root (PgBouncer refuses root), and killed
//! when dropped. Absent, a test skips with the reason, except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const APT_INSTALL: &str = "apt-get install pgbouncer";

pub struct PgBouncer {
    child: Child,
    pub port: u16,
    /// A directory the launcher made, removed when dropped.
    owned: Option<PathBuf>,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.owned {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The binary: `PGBOUNCER`, else `pgbouncer` on PATH, else /usr/sbin/pgbouncer.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGBOUNCER") {
        return Some(PathBuf::from(p));
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v pgbouncer"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    on_path
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")))
        .filter(|p| p.exists())
}

/// The binary, or `None` after printing why the test is skipped (panics under CI).
pub fn require() -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("pgbouncer not found; this test needs it in CI (`{APT_INSTALL}`)")
        }
        None => {
            eprintln!("SKIPPED: pgbouncer not found (`{APT_INSTALL}` to run this test)");
            None
        }
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(o.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl PgBouncer {
    /// Start `bin` with `[databases]` lines `databases`, extra `[pgbouncer]` lines `settings`
    /// and a `userlist.txt` of `users` (name, password), in a directory of its own.
    pub fn start(bin: &Path, databases: &str, settings: &str, users: &[(&str, &str)]) -> PgBouncer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("pgward-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let userlist: String = users
            .iter()
            .map(|(u, p)| format!("\"{u}\" \"{p}\"\n"))
            .collect();
        std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
        let ini = format!(
            "[databases]\n{databases}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nlogfile = {log}\nauth_file = {users}\n{settings}\n",
            log = dir.join("pgbouncer.log").display(),
            users = dir.join("userlist.txt").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let mut b = PgBouncer::run(bin, &dir, &dir.join("pgbouncer.ini"), port);
        b.owned = Some(dir);
        b
    }

    /// Run `bin` on `ini`, listening on `port`, from `dir` (PgBouncer resolves relative paths
    /// from its working directory); `dir` is handed to the `postgres` user when we are root.
    pub fn run(bin: &Path, dir: &Path, ini: &Path, port: u16) -> PgBouncer {
        let mut cmd = Command::new(bin);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if let (true, Some((uid, gid))) = (root, postgres_ids()) {
            use std::os::unix::process::CommandExt;
            let ok = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown {}", dir.display());
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .arg(ini)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let b = PgBouncer {
            child,
            port,
            owned: None,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer does not listen on {port}: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }
}
