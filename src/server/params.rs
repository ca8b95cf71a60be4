//! Session parameters: what a client expects its session to look like and what a server
//! connection currently has, and the statements that make the second match the first.
//!
//! Invariants:
//! - Names are compared case-insensitively (GUC names are); the first spelling seen is kept
//!   for ParameterStatus.
//! - `ServerParams::current` is updated from every ParameterStatus the server sends and from
//!   every SET the proxy issues, so the diff is computed without asking the server.

use std::fmt::Write;
use std::sync::Arc;

/// Reported parameters a client may choose, which follow it across server connections.
pub const SYNCED_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "standard_conforming_strings",
];

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

#[derive(Clone, Debug, Default)]
pub struct ParamSet {
    /// (lower-case name, display name, value)
    items: Vec<(Box<str>, Box<str>, Box<str>)>,
}

impl ParamSet {
    pub fn get(&self, lname: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(l, _, _)| &**l == lname)
            .map(|(_, _, v)| &**v)
    }

    /// Set a value; returns true if it changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let lname = name.to_ascii_lowercase();
        match self.items.iter_mut().find(|(l, _, _)| **l == *lname) {
            Some((_, _, v)) if &**v == value => false,
            Some((_, _, v)) => {
                *v = value.into();
                true
            }
            None => {
                self.items.push((lname.into(), name.into(), value.into()));
                true
            }
        }
    }

    pub fn remove(&mut self, lname: &str) {
        self.items.retain(|(l, _, _)| &**l != lname);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.items.iter().map(|(l, d, v)| (&**l, &**d, &**v))
    }
}

/// A shared base set (the pool's baseline, one per pool) with per-client overrides: an idle
/// client costs only what it changed.
#[derive(Clone, Debug, Default)]
pub struct Layered {
    base: Arc<ParamSet>,
    over: ParamSet,
}

impl Layered {
    pub fn get(&self, lname: &str) -> Option<&str> {
        self.over.get(lname).or_else(|| self.base.get(lname))
    }
    /// Set a value; returns true if the effective value changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        if self.get(&name.to_ascii_lowercase()) == Some(value) {
            return false;
        }
        self.over.set(name, value);
        true
    }
    /// Effective values: (lower-case name, display name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        let over = &self.over;
        self.base
            .iter()
            .map(move |(l, d, v)| (l, d, over.get(l).unwrap_or(v)))
            .chain(
                over.iter()
                    .filter(move |(l, _, _)| self.base.get(l).is_none()),
            )
    }
    /// Values that differ from the base: (lower-case name, display name, value).
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.over
            .iter()
            .filter(|(l, _, v)| self.base.get(l) != Some(*v))
    }
    /// The display name of a parameter (as PostgreSQL reports it), if known.
    pub fn display(&self, lname: &str) -> Option<&str> {
        self.iter().find(|(l, _, _)| *l == lname).map(|(_, d, _)| d)
    }
}

/// What a client wants: the server's reported values as told at login, overridden by its
/// startup parameters and by later ParameterStatus messages it received.
#[derive(Clone, Debug, Default)]
pub struct ClientParams {
    pub values: Layered,
    /// Lower-case names to carry across server connections, beyond [`SYNCED_REPORTED`].
    extra: Vec<Box<str>>,
    /// Canonical bytes of every synced (name, value): equal keys want identical sessions.
    key: Arc<[u8]>,
}

impl ClientParams {
    /// Build from the pool's baseline ParameterStatus set and the client's startup parameters.
    pub fn new(baseline: &Arc<ParamSet>, startup: &[(String, String)]) -> ClientParams {
        let mut values = Layered {
            base: baseline.clone(),
            over: ParamSet::default(),
        };
        let mut extra: Vec<Box<str>> = Vec::new();
        for (k, v) in startup {
            let lk = k.to_ascii_lowercase();
            if NOT_SETTINGS.contains(&lk.as_str()) || lk.starts_with("_pq_.") {
                continue;
            }
            values.set(k, v);
            if !SYNCED_REPORTED.contains(&lk.as_str()) && !extra.iter().any(|s| **s == *lk) {
                extra.push(lk.into());
            }
        }
        let mut p = ClientParams {
            values,
            extra,
            key: Arc::from(&[][..]),
        };
        p.rekey();
        p
    }

    /// Record a ParameterStatus the client was told; returns true if its view changed.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let changed = self.values.set(name, value);
        if changed {
            self.rekey();
        }
        changed
    }

    fn rekey(&mut self) {
        let mut k = Vec::with_capacity(128);
        for lname in self.synced() {
            k.extend_from_slice(lname.as_bytes());
            match self.values.get(lname) {
                // 0 ends a name, 1 a value, 2 marks "not set": none occur in GUC text.
                Some(v) => {
                    k.push(0);
                    k.extend_from_slice(v.as_bytes());
                    k.push(1);
                }
                None => k.push(2),
            }
        }
        self.key = k.into();
    }

    /// Lower-case names of the parameters that follow the client.
    pub fn synced(&self) -> impl Iterator<Item = &str> {
        SYNCED_REPORTED
            .iter()
            .copied()
            .chain(self.extra.iter().map(|s| &**s))
    }

    pub fn is_synced(&self, lname: &str) -> bool {
        self.synced().any(|s| s == lname)
    }
}

#[derive(Clone, Debug, Default)]
pub struct ServerParams {
    pub current: ParamSet,
    /// Values right after connecting (the role's and database's defaults).
    pub baseline: ParamSet,
    /// Key of the client parameters `current` was last synced to, while `current` has not
    /// changed since: a client with an equal key needs nothing (the common case, checked
    /// with one comparison instead of a diff).
    synced: Option<Arc<[u8]>>,
}

impl ServerParams {
    /// Record a ParameterStatus from the server.
    pub fn observe(&mut self, name: &[u8], value: &[u8]) {
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(value);
        if self.current.set(&name, &value) {
            self.synced = None;
        }
    }

    pub fn mark_baseline(&mut self) {
        self.baseline = self.current.clone();
    }

    /// Append to `sql` the statements that make this connection match `client`, and record
    /// them as applied. Returns false (and appends nothing) when it already matches.
    pub fn sync_to(&mut self, client: &ClientParams, sql: &mut String) -> bool {
        if let Some(k) = &self.synced {
            if Arc::ptr_eq(k, &client.key) || **k == *client.key {
                return false;
            }
        }
        let start = sql.len();
        for lname in client.synced() {
            let want = client.values.get(lname);
            let have = self.current.get(lname);
            if want == have {
                continue;
            }
            match want {
                Some(v) => {
                    // set_config parses the value as a startup option would: a list such as
                    // `search_path=a,b` stays a list (`SET x TO 'a,b'` would make it one name).
                    let _ = write!(
                        sql,
                        "SELECT pg_catalog.set_config({}, {}, false);",
                        quote_literal(lname),
                        quote_literal(v)
                    );
                    let display = client.values.display(lname).unwrap_or(lname).to_string();
                    self.current.set(&display, v);
                }
                None => {
                    let _ = write!(sql, "RESET {};", quote_ident(lname));
                    match self.baseline.get(lname) {
                        Some(b) => {
                            let b = b.to_string();
                            self.current.set(lname, &b);
                        }
                        None => self.current.remove(lname),
                    }
                }
            }
        }
        // Settings a previous client had the proxy set, that this client does not want.
        let stale: Vec<String> = self
            .current
            .iter()
            .filter(|(l, _, _)| self.baseline.get(l).is_none() && !client.is_synced(l))
            .map(|(l, _, _)| l.to_string())
            .collect();
        for lname in stale {
            let _ = write!(sql, "RESET {};", quote_ident(&lname));
            self.current.remove(&lname);
        }
        self.synced = Some(client.key.clone());
        sql.len() > start
    }

    /// After `RESET ALL` (or DISCARD ALL): the session is back to the baseline.
    pub fn reset_to_baseline(&mut self) {
        self.current = self.baseline.clone();
        self.synced = None;
    }
}

/// `SELECT pg_catalog.set_config('name', 'value', local), …` for literal (name, value) pairs.
pub fn set_config_select<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    local: bool,
) -> String {
    let mut sql = String::from("SELECT ");
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(
            sql,
            "pg_catalog.set_config({}, {}, {local})",
            quote_literal(name),
            quote_literal(value)
        );
    }
    sql
}

/// Quote an identifier for SQL text.
pub fn quote_ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quote a string literal for SQL text (standard_conforming_strings-proof: E'' form).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_only_what_differs() {
        let mut server = ServerParams::default();
        server.observe(b"application_name", b"");
        server.observe(b"DateStyle", b"ISO, MDY");
        server.observe(b"server_version", b"15.0");
        server.mark_baseline();
        let base = Arc::new(server.baseline.clone());
        let client = ClientParams::new(
            &base,
            &[
                ("user".into(), "u".into()),
                ("application_name".into(), "psql".into()),
                ("extra_float_digits".into(), "3".into()),
            ],
        );
        let mut sql = String::new();
        assert!(server.sync_to(&client, &mut sql));
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'application_name', E'psql', false);SELECT pg_catalog.set_config(E'extra_float_digits', E'3', false);"
        );
        sql.clear();
        assert!(!server.sync_to(&client, &mut sql));
        // another client without extra_float_digits gets it reset
        let other = ClientParams::new(&base, &[]);
        assert!(server.sync_to(&other, &mut sql));
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'application_name', E'', false);RESET \"extra_float_digits\";"
        );
    }

    #[test]
    fn a_changed_server_value_is_synced_again() {
        let mut server = ServerParams::default();
        server.observe(b"application_name", b"");
        server.observe(b"TimeZone", b"UTC");
        server.mark_baseline();
        let base = Arc::new(server.baseline.clone());
        let startup = [("application_name".to_string(), "a".to_string())];
        let (c1, c2) = (
            ClientParams::new(&base, &startup),
            ClientParams::new(&base, &startup),
        );
        let mut sql = String::new();
        assert!(server.sync_to(&c1, &mut sql));
        sql.clear();
        // an equal client (another allocation) needs nothing
        assert!(!server.sync_to(&c2, &mut sql));
        // the client's own SET (seen as ParameterStatus) changes the server: diff again
        server.observe(b"TimeZone", b"Asia/Tokyo");
        assert!(server.sync_to(&c2, &mut sql));
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'timezone', E'UTC', false);"
        );
        sql.clear();
        // the client's view follows a ParameterStatus it was told
        let mut c3 = ClientParams::new(&base, &startup);
        assert!(c3.set("TimeZone", "Europe/Paris"));
        assert!(server.sync_to(&c3, &mut sql));
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'timezone', E'Europe/Paris', false);"
        );
        sql.clear();
        server.reset_to_baseline();
        assert!(server.sync_to(&c3, &mut sql));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\"), "E'it''s \\\\'");
    }
}
