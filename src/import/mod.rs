//! `pgward import-pgbouncer`: read a pgbouncer.ini (and its userlist.txt) and write the
//! equivalent pgward.toml.
//!
//! - [`ini`]: PgBouncer's ini format (sections, comments, `%include`), with file:line.
//! - `crate::config::conninfo`: the `[databases]` connection strings (shared with upstreams).
//! - [`userlist`]: the `auth_file`.
//! - [`settings`]: the `[pgbouncer]` section → top level, `[pool]` and `[tls]`.
//! - [`databases`]: `[databases]` → `[[databases]]` with upstream URLs; the `*` fallback.
//! - [`users`]: userlist + `auth_type` → `[[users]]`; `auth_user`/`auth_query` →
//!   `[auth_query]`; `admin_users`; `[users]`.
//! - [`emit`]: the TOML text.
//!
//! Invariants:
//! - Every ini key that does not become a pgward key gets exactly one [`Note`] saying why
//!   (printed to stderr as `file:line: key `k`: …`). No note ever contains a secret.
//! - The output is validated with pgward's own loader ([`crate::config::Config`]) before it
//!   is returned; a document that does not validate is an [`ImportError`], never output.
//! - [`Import::problems`] lists what makes the result unable to serve the ini's clients
//!   (a database that could not be carried over, no login role for a database): the CLI
//!   still writes the document (a draft to finish by hand) but exits non-zero.

pub mod databases;
pub mod emit;
pub mod ini;
pub mod settings;
pub mod userlist;
pub mod users;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use ini::Origin;

/// A line for the user about one ini key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub at: Option<Origin>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: key `{}`: {}", self.key, self.message),
            None => write!(f, "key `{}`: {}", self.key, self.message),
        }
    }
}

/// What the import needs besides the ini file.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The userlist; default: the ini's `auth_file`.
    pub userlist: Option<PathBuf>,
    /// Database names the `*` fallback entry stands for (pgward has no wildcard database).
    pub wildcard_databases: Vec<String>,
}

/// The result of an import.
#[derive(Debug)]
pub struct Import {
    /// pgward.toml, validated.
    pub toml: String,
    /// One per key not carried over (or carried over with a changed meaning).
    pub notes: Vec<Note>,
    /// Why the result would not serve the ini's clients; empty when it would.
    pub problems: Vec<Note>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Ini(#[from] ini::IniError),
    #[error("the generated configuration does not validate: {0}")]
    Invalid(#[from] crate::config::ConfigError),
}

/// Collects notes and problems while mapping.
#[derive(Default)]
pub struct Log {
    pub notes: Vec<Note>,
    pub problems: Vec<Note>,
}

impl Log {
    pub fn note(&mut self, e: &ini::Entry, message: impl Into<String>) {
        self.notes.push(Note {
            at: Some(e.at.clone()),
            key: e.key.clone(),
            message: message.into(),
        });
    }

    pub fn note_at(&mut self, at: &Origin, key: &str, message: impl Into<String>) {
        self.notes.push(Note {
            at: Some(at.clone()),
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub fn problem(&mut self, at: Option<&Origin>, key: &str, message: impl Into<String>) {
        self.problems.push(Note {
            at: at.cloned(),
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// The `[pgbouncer]` section: the last value of each key wins, as in PgBouncer.
#[derive(Default)]
pub struct Settings {
    pub map: HashMap<String, ini::Entry>,
    /// Keys in the order they first appeared.
    pub order: Vec<String>,
}

impl Settings {
    pub fn get(&self, key: &str) -> Option<&ini::Entry> {
        self.map.get(key)
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(|e| e.value.as_str())
    }
}

/// Import `ini_path`.
pub fn import(ini_path: &Path, opts: &Options) -> Result<Import, ImportError> {
    let entries = ini::read(ini_path)?;
    import_entries(entries, ini_path, opts)
}

/// Import already-read entries (`ini_path` locates a relative `auth_file`).
pub fn import_entries(
    entries: Vec<ini::Entry>,
    ini_path: &Path,
    opts: &Options,
) -> Result<Import, ImportError> {
    let mut log = Log::default();
    let mut settings = Settings::default();
    let mut dbs = Vec::new();
    let mut user_overrides = Vec::new();
    for e in entries {
        match e.section.as_str() {
            "pgbouncer" => {
                if !settings.map.contains_key(&e.key) {
                    settings.order.push(e.key.clone());
                }
                settings.map.insert(e.key.clone(), e);
            }
            "databases" => dbs.push(e),
            "users" => user_overrides.push(e),
            "peers" => log.note(
                &e,
                "not carried over: pgward has no peering of several processes for cancel requests ([peers])",
            ),
            other => log.note(
                &e,
                format!("not carried over: unknown section [{other}]"),
            ),
        }
    }
    let mut doc = emit::Document {
        header: vec![
            format!(
                "Imported from {} by `pgward import-pgbouncer`.",
                ini_path.display()
            ),
            "Check it with `pgward check-config`; docs/operations.md explains the mapping.".into(),
        ],
        ..Default::default()
    };
    let userlist = users::load_userlist(&settings, ini_path, opts, &mut log);
    settings::apply(&settings, &mut doc, &mut log);
    let server_tls = settings::server_tls(&settings);
    let auth = users::AuthPlan::new(&settings, &userlist);
    databases::apply(
        &dbs,
        &settings,
        &server_tls,
        &auth,
        opts,
        &mut doc,
        &mut log,
    );
    users::apply(
        &settings,
        &userlist,
        &user_overrides,
        &server_tls,
        &mut doc,
        &mut log,
    );
    let toml = doc.render();
    crate::config::Config::from_toml_with_env(&toml, Path::new("pgward.toml"), &|_| None)?;
    let (mut notes, mut problems) = (log.notes, log.problems);
    // In file order (files by name, then lines); notes without a place last.
    let order = |n: &Note| {
        n.at.as_ref()
            .map_or((1, String::new(), 0), |a| (0, a.file.clone(), a.line))
    };
    notes.sort_by_key(order);
    problems.sort_by_key(order);
    Ok(Import {
        toml,
        notes,
        problems,
    })
}

/// The command: write the result to `out` (stdout when `None`), notes to stderr.
pub fn run_cli(ini_path: &Path, opts: &Options, out: Option<&Path>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let result = match import(ini_path, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgward import-pgbouncer: {e}");
            return ExitCode::FAILURE;
        }
    };
    for n in &result.notes {
        eprintln!("{n}");
    }
    let written = match out {
        Some(p) => std::fs::write(p, &result.toml).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            print!("{}", result.toml);
            Ok(())
        }
    };
    if let Err(e) = written {
        eprintln!("pgward import-pgbouncer: cannot write {e}");
        return ExitCode::FAILURE;
    }
    if result.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in &result.problems {
            eprintln!("error: {p}");
        }
        eprintln!(
            "pgward import-pgbouncer: the result would not serve every client of {} ({} problem(s) above); edit it before use",
            ini_path.display(),
            result.problems.len()
        );
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ini: &str, userlist: &str) -> Import {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgward-import-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("userlist.txt"), userlist).unwrap();
        let entries = ini::parse(ini, &dir.join("pgbouncer.ini")).unwrap();
        let opts = Options {
            userlist: Some(dir.join("userlist.txt")),
            ..Default::default()
        };
        let r = import_entries(entries, &dir.join("pgbouncer.ini"), &opts).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    fn config(r: &Import) -> crate::config::Config {
        crate::config::Config::from_toml_with_env(&r.toml, Path::new("t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn forced_user_database_with_settings() {
        let r = run(
            "[databases]\napp = host=db.internal port=5433 dbname=app_prod user=svc password='p w' pool_size=7 pool_mode=statement connect_query='SELECT 1'\n\
             [pgbouncer]\nlisten_addr = 10.1.2.3\nlisten_port = 7000\nauth_type = scram-sha-256\n\
             default_pool_size = 30\nserver_lifetime = 0\nquery_timeout = 2.5\ntcp_user_timeout = 1500\nserver_tls_sslmode = require\nbogus_key = 1\n",
            "\"alice\" \"pw\"\n\"bob\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let c = config(&r);
        assert_eq!(c.listen.to_string(), "10.1.2.3:7000");
        let db = c.database("app").unwrap();
        assert_eq!(
            (db.upstream.host.as_str(), db.upstream.port),
            ("db.internal", 5433)
        );
        assert_eq!(
            (db.upstream.user.as_str(), db.upstream.dbname.as_str()),
            ("svc", "app_prod")
        );
        assert_eq!(db.upstream.password.as_deref(), Some("p w"));
        assert_eq!(db.upstream.sslmode, crate::config::SslMode::Require);
        assert_eq!(db.pool.size, 7);
        assert_eq!(db.pool.mode, crate::config::PoolMode::Transaction);
        assert_eq!(c.raw.pool.size, 30);
        assert_eq!(db.pool.server_lifetime, std::time::Duration::ZERO);
        assert_eq!(
            db.pool.query_timeout,
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(
            db.pool.tcp.user_timeout,
            std::time::Duration::from_millis(1500)
        );
        // scram-sha-256 cannot check bob's md5 hash: left out, with a note.
        assert!(c.users.contains_key("alice") && !c.users.contains_key("bob"));
        let notes: Vec<String> = r.notes.iter().map(|n| n.to_string()).collect();
        let has = |s: &str| notes.iter().any(|n| n.contains(s));
        assert!(has("key `app.pool_mode`: statement mode"), "{notes:?}");
        assert!(
            has("key `app.connect_query`: not carried over"),
            "{notes:?}"
        );
        assert!(
            has("key `bogus_key`: not carried over: unknown"),
            "{notes:?}"
        );
        assert!(has("key `bob`: user left out"), "{notes:?}");
        assert!(notes.iter().all(|n| !n.contains("p w")), "{notes:?}");
    }

    #[test]
    fn database_without_user() {
        // One plaintext user in the userlist: it becomes the login role.
        let r = run(
            "[databases]\napp = host=h\n[pgbouncer]\n",
            "\"only\" \"pw\"\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let c = config(&r);
        let up = &c.database("app").unwrap().upstream;
        assert_eq!(
            (up.user.as_str(), up.password.as_deref()),
            ("only", Some("pw"))
        );
        assert!(r.notes.iter().any(|n| n.key == "app.user"), "{:?}", r.notes);
        // Several users and no auth_user: no single role can stand for them.
        let r = run(
            "[databases]\napp = host=h\nother = host=h user=x password=y\n[pgbouncer]\n",
            "\"a\" \"1\"\n\"b\" \"2\"\n",
        );
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].key, "app");
        assert!(config(&r).database("other").is_some());
        // auth_user: the login role, and [auth_query] for everyone else.
        let r = run(
            "[databases]\napp = host=h\n[pgbouncer]\nauth_user = lookup\nauth_query = SELECT * FROM f($1)\n",
            "\"lookup\" \"lpw\"\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let c = config(&r);
        assert_eq!(c.database("app").unwrap().upstream.user, "lookup");
        let q = c.auth_query.unwrap();
        assert_eq!(q.query, "SELECT * FROM f($1)");
        assert!(
            q.upstream.starts_with("postgres://lookup:lpw@h:5432/app"),
            "{}",
            q.upstream
        );
    }

    #[test]
    fn auth_types_and_admin_users() {
        let users = "\"a\" \"pw\"\n\"m\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n";
        for (t, a, m) in [
            ("md5", "md5", "md5"),
            ("plain", "password", "password"),
            ("trust", "trust", "trust"),
        ] {
            let r = run(
                &format!("[pgbouncer]\nauth_type = {t}\nadmin_users = a, ghost\n"),
                users,
            );
            let c = config(&r);
            let method = |u: &str| format!("{:?}", c.users[u].auth).to_ascii_lowercase();
            assert_eq!(method("a"), a.replace('-', ""), "{t}");
            assert_eq!(method("m"), m, "{t}");
            assert_eq!(c.admin_users, ["a"]);
            assert!(r
                .notes
                .iter()
                .any(|n| n.key == "admin_users" && n.message.contains("ghost")));
        }
    }

    #[test]
    fn client_tls_and_listen_defaults() {
        let r = run(
            "[pgbouncer]\nlisten_addr = *\nclient_tls_sslmode = verify-ca\nclient_tls_cert_file = /c.crt\nclient_tls_key_file = /c.key\nclient_tls_ca_file = /ca.crt\nclient_tls_ciphers = fast\n",
            "",
        );
        let c = config(&r);
        assert_eq!(c.listen.to_string(), "0.0.0.0:6432");
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(tls.client_tls, crate::config::ClientTls::Require);
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/ca.crt")));
        assert!(r.notes.iter().any(|n| n.key == "client_tls_ciphers"));
        // PgBouncer's defaults where they differ from pgward's.
        assert_eq!(c.raw.pool.mode, "session");
        assert_eq!(c.max_client_connections, 100);
        assert_eq!(c.raw.pool.checkout_timeout, "120s");
    }
}
