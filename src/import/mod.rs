//! `pgward import-pgbouncer`: read a pgbouncer.ini (and its userlist.txt) and write the
//! equivalent pgward.toml.
//!
//! - [`ini`]: PgBouncer's ini format (sections, comments, `%include`), with file:line.
//! - [`connstr`]: the `[databases]` connection strings.
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

pub mod connstr;
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
    Ok(Import {
        toml,
        notes: log.notes,
        problems: log.problems,
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
