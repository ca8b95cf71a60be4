//! Who may connect: the userlist and `auth_type` → `[[users]]`; `auth_user` + `auth_query`
//! → `[auth_query]`; `admin_users`; the `[users]` section.
//!
//! - Each userlist entry becomes a `[[users]]` entry with its secret as written (plaintext,
//!   md5 hash or SCRAM verifier: pgward accepts the same three forms) and the `auth` method
//!   that `auth_type` gave it: `md5` → md5 (SCRAM for a SCRAM verifier, as PgBouncer does),
//!   `scram-sha-256` → SCRAM (an md5 hash cannot be checked: the user is left out),
//!   `plain` → cleartext, `trust`/`any` → trust. `hba`, `cert`, `pam` have no equivalent:
//!   users keep the method their secret's form implies.
//! - [`AuthPlan`] answers which role a database logs in to PostgreSQL with when its entry
//!   names none ([`super::databases`]).

use std::path::{Path, PathBuf};

use super::emit::{Document, Section};
use super::ini::{Entry, Origin};
use super::settings::ServerTls;
use super::userlist::UserEntry;
use super::{Log, Options, Settings};
use crate::auth::secret::Secret;

/// The userlist that was read, if any.
#[derive(Default)]
pub struct Userlist {
    pub users: Vec<UserEntry>,
    pub path: Option<PathBuf>,
}

impl Userlist {
    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        // PgBouncer keeps the last entry of a name.
        self.users.iter().rev().find(|u| u.name == name)
    }

    /// The user's password if the userlist holds it in plaintext.
    pub fn plaintext(&self, name: &str) -> Option<&str> {
        self.get(name)
            .filter(|u| matches!(Secret::parse(&u.secret), Ok(Secret::Plain(_))))
            .map(|u| u.secret.as_str())
    }
}

/// Read `--userlist`, else the ini's `auth_file`.
pub fn load_userlist(s: &Settings, ini_path: &Path, opts: &Options, log: &mut Log) -> Userlist {
    let (path, entry) = match (&opts.userlist, s.get("auth_file")) {
        (Some(p), _) => (p.clone(), None),
        (None, Some(e)) if !e.value.is_empty() => {
            let including = Path::new(&e.at.file);
            let base = if including.as_os_str().is_empty() {
                ini_path
            } else {
                including
            };
            (super::ini::resolve(base, &e.value), Some(e))
        }
        _ => return Userlist::default(),
    };
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(err) => {
            match entry {
                Some(e) => log.note(
                    e,
                    format!(
                        "cannot read {}: {err}; no [[users]] imported (pass --userlist FILE)",
                        path.display()
                    ),
                ),
                None => log.problem(
                    None,
                    "--userlist",
                    format!("cannot read {}: {err}", path.display()),
                ),
            }
            return Userlist::default();
        }
    };
    let (users, bad) = super::userlist::parse(&text, &path);
    for (at, why) in bad {
        log.note_at(&at, "(userlist)", why);
    }
    Userlist {
        users,
        path: Some(path),
    }
}

/// The `auth_user` and the userlist, for choosing a database's login role.
pub struct AuthPlan<'a> {
    pub auth_user: Option<(String, Origin)>,
    pub userlist: &'a Userlist,
}

/// The role a database logs in to PostgreSQL with.
pub struct Login {
    pub user: String,
    pub password: Option<String>,
}

impl<'a> AuthPlan<'a> {
    pub fn new(s: &Settings, userlist: &'a Userlist) -> AuthPlan<'a> {
        AuthPlan {
            auth_user: s
                .get("auth_user")
                .filter(|e| !e.value.is_empty())
                .map(|e| (e.value.clone(), e.at.clone())),
            userlist,
        }
    }

    /// The login for a database entry: `Ok((login, note))`, or `Err(problem)` when no single
    /// role can stand for PgBouncer's "each client logs in as itself".
    pub fn login(
        &self,
        user: Option<&str>,
        password: Option<&str>,
        entry_auth_user: Option<&str>,
    ) -> Result<(Login, Option<String>), String> {
        let with_password = |u: &str, note: Option<String>| {
            let pw = password
                .map(str::to_string)
                .or_else(|| self.userlist.plaintext(u).map(str::to_string));
            let note = match (&pw, self.userlist.get(u)) {
                (None, Some(_)) => Some(format!(
                    "{}the userlist holds only a hash of `{u}`'s password; pgward needs the plaintext to log in to PostgreSQL: add it to the upstream URL",
                    note.map(|n| format!("{n}; ")).unwrap_or_default()
                )),
                _ => note,
            };
            (
                Login {
                    user: u.to_string(),
                    password: pw,
                },
                note,
            )
        };
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            return Ok(with_password(u, None));
        }
        let auth_user = entry_auth_user
            .map(str::to_string)
            .or_else(|| self.auth_user.as_ref().map(|(u, _)| u.clone()));
        if let Some(a) = auth_user {
            return Ok(with_password(
                &a,
                Some(format!(
                    "no user=: PgBouncer logged in as each client's own user; pgward logs in as auth_user `{a}` for clients in [[users]] and as the client itself for users found by [auth_query] (remove a [[users]] entry to have it log in as itself)"
                )),
            ));
        }
        let plain: Vec<&UserEntry> = self
            .userlist
            .users
            .iter()
            .filter(|u| self.userlist.plaintext(&u.name) == Some(u.secret.as_str()))
            .collect();
        match (plain.as_slice(), self.userlist.users.len()) {
            ([only], 1) => Ok(with_password(
                &only.name,
                Some(format!(
                    "no user=: PgBouncer logged in as each client's own user; the userlist has one user, `{}`, and pgward logs in as it",
                    only.name
                )),
            )),
            (_, 0) => Err("no user= and nothing to log in with: PgBouncer used each client's own user and password, but there is no userlist or auth_user; add user= and password= to the entry".into()),
            (_, n) => Err(format!(
                "no user=: PgBouncer logged in as each client's own user ({n} users in the userlist); pgward logs in with one role per database: add user= and password= to the entry, or set auth_user and auth_query"
            )),
        }
    }
}

/// `[[users]]`, `admin_users`, `[auth_query]` and the notes for the auth keys.
pub fn apply(
    s: &Settings,
    userlist: &Userlist,
    overrides: &[Entry],
    server_tls: &ServerTls,
    doc: &mut Document,
    log: &mut Log,
) {
    let auth_type = s
        .value("auth_type")
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "md5".into());
    if let Some(e) = s.get("auth_type") {
        let why = match auth_type.as_str() {
            "md5" | "scram-sha-256" | "plain" | "trust" => None,
            "any" => Some("carried over as trust for the userlist's users; pgward accepts no user that is not configured (PgBouncer's `any` accepted every name)"),
            "hba" => Some("not carried over: write auth_hba_file's rules as [[access]] entries; users get the method their password's form implies (SCRAM for plaintext and SCRAM verifiers, md5 for md5 hashes)"),
            "cert" => Some("not carried over: pgward does not authenticate by client certificate; users get the method their password's form implies"),
            "pam" => Some("not carried over: pgward has no PAM; users get the method their password's form implies"),
            _ => Some("not carried over: unknown auth_type; users get the method their password's form implies"),
        };
        if let Some(w) = why {
            log.note(e, w);
        }
    }
    for u in &userlist.users {
        if userlist.get(&u.name).map(|l| l.at.line) != Some(u.at.line) {
            log.note_at(
                &u.at,
                &u.name,
                "a later line names the same user; this one is skipped (as PgBouncer does)",
            );
            continue;
        }
        let secret = match Secret::parse(&u.secret) {
            Ok(s) => s,
            Err(err) => {
                log.note_at(&u.at, &u.name, format!("user left out: {err}"));
                continue;
            }
        };
        let auth = match (auth_type.as_str(), &secret) {
            ("md5", Secret::Scram(_)) => None,
            ("md5", _) => Some("md5"),
            ("scram-sha-256", Secret::Md5 { .. }) => {
                log.note_at(&u.at, &u.name, "user left out: auth_type scram-sha-256 cannot check an md5 hash (PgBouncer refused this user too)");
                continue;
            }
            ("plain", _) => Some("password"),
            ("trust" | "any", _) => Some("trust"),
            _ => None,
        };
        let mut sec = Section::default();
        sec.set("name", u.name.as_str(), u.at.to_string());
        if auth != Some("trust") {
            sec.set("password", u.secret.as_str(), "");
        }
        if let Some(a) = auth {
            sec.set("auth", a, format!("auth_type = {auth_type}"));
        }
        doc.users.push(sec);
    }
    let configured: Vec<String> = doc
        .users
        .iter()
        .filter_map(|u| u.get("name").and_then(|v| v.as_str()).map(str::to_string))
        .collect();
    admin_users(s, &configured, doc, log);
    if let Some(e) = s.get("stats_users") {
        log.note(e, "not carried over: pgward has no read-only console role; users in admin_users get the whole console");
    }
    auth_query(s, userlist, server_tls, doc, log);
    for e in overrides {
        match crate::config::conninfo::parse(&e.value) {
            Ok(params) if params.is_empty() => {}
            Ok(params) => {
                let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
                log.note(
                    e,
                    format!(
                        "not carried over: pgward has no per-user settings ({})",
                        names.join(", ")
                    ),
                );
            }
            Err(err) => log.note(e, format!("not carried over: {err}")),
        }
    }
}

fn admin_users(s: &Settings, configured: &[String], doc: &mut Document, log: &mut Log) {
    let Some(e) = s.get("admin_users") else {
        return;
    };
    let mut kept = Vec::new();
    let mut left = Vec::new();
    for name in e.value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if configured.iter().any(|c| c == name) {
            kept.push(toml::Value::String(name.to_string()));
        } else {
            left.push(name);
        }
    }
    if !left.is_empty() {
        log.note(e, format!("not carried over for {}: not in the userlist (pgward's admin users must be [[users]] entries)", left.join(", ")));
    }
    if !kept.is_empty() {
        doc.top.set(
            "admin_users",
            toml::Value::Array(kept),
            format!("{} admin_users; the console is dbname `pgward`", e.at),
        );
    }
}

fn auth_query(
    s: &Settings,
    userlist: &Userlist,
    server_tls: &ServerTls,
    doc: &mut Document,
    log: &mut Log,
) {
    let Some(user_entry) = s.get("auth_user").filter(|e| !e.value.is_empty()) else {
        for k in ["auth_query", "auth_dbname"] {
            if let Some(e) = s.get(k) {
                log.note(e, "not carried over: PgBouncer uses it only with auth_user");
            }
        }
        return;
    };
    let Some(first) = doc
        .databases
        .first()
        .and_then(|d| d.get("upstream"))
        .and_then(|v| v.as_str())
        .and_then(|u| crate::config::Upstream::parse(u).ok())
    else {
        log.note(
            user_entry,
            "not carried over: there is no database to run auth_query on",
        );
        return;
    };
    let user = user_entry.value.as_str();
    let dbname = s
        .value("auth_dbname")
        .filter(|d| !d.is_empty())
        .unwrap_or(&first.dbname);
    let password = userlist.plaintext(user);
    if password.is_none() {
        log.note(user_entry, format!("the userlist has no plaintext password for auth_user `{user}`: add it to [auth_query] upstream unless PostgreSQL trusts it"));
    }
    let sslmode = match server_tls.sslmode.as_deref() {
        Some("disable") => "disable",
        None | Some("allow" | "prefer") => "prefer",
        Some(_) => {
            if let Some(e) = s.get("server_tls_sslmode") {
                log.note(e, "pgward's auth_query connection does not use TLS: PostgreSQL must accept auth_user without TLS (sslmode=prefer in [auth_query])");
            }
            "prefer"
        }
    };
    let url = super::databases::upstream_url(
        user,
        password,
        &[(first.host.clone(), first.port)],
        dbname,
        Some(sslmode),
        None,
    );
    let mut sec = Section::default();
    let mut from = vec![format!("{} auth_user", user_entry.at)];
    if let Some(e) = s.get("auth_dbname") {
        from.push(format!("{} auth_dbname", e.at));
    }
    sec.set("upstream", url, from.join(", "));
    match s.get("auth_query") {
        Some(e) if !e.value.is_empty() => {
            sec.set("query", e.value.as_str(), format!("{} auth_query", e.at))
        }
        _ => sec.set(
            "query",
            "SELECT usename, passwd FROM pg_shadow WHERE usename = $1",
            "PgBouncer's default",
        ),
    }
    if doc.databases.len() > 1 {
        log.note(user_entry, "pgward runs auth_query on one database (the first one's server), PgBouncer on the database the client asked for");
    }
    doc.auth_query = Some(sec);
}
