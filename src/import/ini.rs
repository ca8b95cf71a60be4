//! A reader for PgBouncer's ini files: sections, `key = value` lines, comments and
//! `%include`.
//!
//! The format, as PgBouncer reads it:
//! - `[name]` starts a section; keys before the first section are an error.
//! - `key = value`; whitespace around both is dropped. Keys of `[pgbouncer]` are
//!   case-insensitive (returned lower-cased); keys of `[databases]` and `[users]` are names
//!   and keep their case. A key may be double-quoted (`"my db" = …`, `""` for a quote).
//! - A line whose first non-blank character is `;` or `#` is a comment. Those characters
//!   later in a line are part of the value (there are no trailing comments).
//! - `%include PATH` reads another file in place. A relative path is looked up next to the
//!   including file first, then in the current directory (PgBouncer's own rule).
//!
//! Invariants: every entry carries the file and line it came from; bad input is an
//! [`IniError`] naming both, never a panic; include cycles and depth are bounded.

use std::fmt;
use std::path::{Path, PathBuf};

/// Includes nested deeper than this are refused (PgBouncer's limit is 10 as well).
const MAX_DEPTH: usize = 10;

/// Where a line came from, printed as `file:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `key = value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased section name (`pgbouncer`, `databases`, `users`, …).
    pub section: String,
    pub key: String,
    pub value: String,
    pub at: Origin,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{at}: {message}")]
pub struct IniError {
    pub at: Origin,
    pub message: String,
}

/// Read `path` and everything it includes, in order.
pub fn read(path: &Path) -> Result<Vec<Entry>, IniError> {
    let mut out = Vec::new();
    let mut section = None;
    read_into(path, None, &mut section, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// Parse ini text (for tests and for files already read); `%include` is resolved against
/// `name`'s directory.
pub fn parse(text: &str, name: &Path) -> Result<Vec<Entry>, IniError> {
    let mut out = Vec::new();
    let mut section = None;
    parse_into(
        text,
        name,
        &mut section,
        &mut out,
        &mut vec![name.to_path_buf()],
    )?;
    Ok(out)
}

fn read_into(
    path: &Path,
    from: Option<&Origin>,
    section: &mut Option<String>,
    out: &mut Vec<Entry>,
    stack: &mut Vec<PathBuf>,
) -> Result<(), IniError> {
    let here = || {
        from.cloned().unwrap_or(Origin {
            file: path.display().to_string(),
            line: 0,
        })
    };
    if stack.len() > MAX_DEPTH {
        return Err(IniError {
            at: here(),
            message: format!("%include nested more than {MAX_DEPTH} deep"),
        });
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if stack.contains(&canonical) {
        return Err(IniError {
            at: here(),
            message: format!("%include cycle: {} includes itself", path.display()),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| IniError {
        at: here(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    stack.push(canonical);
    let r = parse_into(&text, path, section, out, stack);
    stack.pop();
    r
}

fn parse_into(
    text: &str,
    path: &Path,
    section: &mut Option<String>,
    out: &mut Vec<Entry>,
    stack: &mut Vec<PathBuf>,
) -> Result<(), IniError> {
    let file = path.display().to_string();
    for (i, raw) in text.lines().enumerate() {
        let at = Origin {
            file: file.clone(),
            line: i + 1,
        };
        let err = |message: String| IniError {
            at: at.clone(),
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("%include") {
            let target = rest.trim();
            if target.is_empty() || !rest.starts_with(char::is_whitespace) {
                return Err(err("%include needs a file name".into()));
            }
            let resolved = resolve(path, target);
            read_into(&resolved, Some(&at), section, out, stack)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| err(format!("section header without `]`: {line}")))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(err("empty section name".into()));
            }
            *section = Some(name.to_ascii_lowercase());
            continue;
        }
        let Some(sec) = section.clone() else {
            return Err(err(
                "`key = value` before any [section] (expected [databases], [pgbouncer] or [users] first)"
                    .into(),
            ));
        };
        let (key, value) = split_key(line).map_err(err)?;
        let key = if sec == "pgbouncer" {
            key.to_ascii_lowercase()
        } else {
            key
        };
        out.push(Entry {
            section: sec,
            key,
            value: value.trim().to_string(),
            at,
        });
    }
    Ok(())
}

/// `key = value`, the key possibly double-quoted.
fn split_key(line: &str) -> Result<(String, &str), String> {
    if let Some(rest) = line.strip_prefix('"') {
        let mut key = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    chars.next();
                    key.push('"');
                    continue;
                }
                let after = rest[i + 1..].trim_start();
                let value = after
                    .strip_prefix('=')
                    .ok_or_else(|| format!("expected `=` after the quoted name \"{key}\""))?;
                return Ok((key, value));
            }
            key.push(c);
        }
        return Err("unterminated quoted name".into());
    }
    let (k, v) = line
        .split_once('=')
        .ok_or_else(|| format!("expected `key = value`, got `{}`", shorten(line)))?;
    let k = k.trim();
    if k.is_empty() {
        return Err("empty key before `=`".into());
    }
    Ok((k.to_string(), v))
}

fn shorten(s: &str) -> String {
    // Never echo a whole line: it may hold a password.
    let mut out: String = s.chars().take(20).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A relative include or file path: next to `including` if it exists there, else as given
/// (relative to the current directory, as PgBouncer resolves it).
pub fn resolve(including: &Path, target: &str) -> PathBuf {
    let t = Path::new(target);
    if t.is_absolute() {
        return t.to_path_buf();
    }
    let beside = including.parent().unwrap_or(Path::new(".")).join(t);
    if beside.exists() {
        beside
    } else {
        t.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Entry>, IniError> {
        parse(text, Path::new("t.ini"))
    }

    #[test]
    fn sections_keys_and_comments() {
        let e = p("; top\n[databases]\nApp = host=x\n# c\n[PgBouncer]\n  Listen_Port = 6433 \nx = a ; not a comment\n").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].section.as_str(), e[0].key.as_str()),
            ("databases", "App")
        );
        assert_eq!(e[0].value, "host=x");
        assert_eq!(e[1].section, "pgbouncer");
        assert_eq!(
            (e[1].key.as_str(), e[1].value.as_str()),
            ("listen_port", "6433")
        );
        assert_eq!(e[1].at.line, 6);
        assert_eq!(e[2].value, "a ; not a comment");
    }

    #[test]
    fn quoted_names() {
        let e = p("[databases]\n\"my \"\"db\"\"\" = dbname=x\n").unwrap();
        assert_eq!(e[0].key, "my \"db\"");
        assert_eq!(e[0].value, "dbname=x");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("x = 1\n").unwrap_err();
        assert_eq!(e.at.line, 1);
        assert!(e.to_string().starts_with("t.ini:1: "), "{e}");
        let e = p("[pgbouncer]\n\nnot a pair\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.ini:3: expected `key = value`, got `not a pair`"
        );
        let e = p("[pgbouncer\n").unwrap_err();
        assert_eq!(e.at.line, 1);
        let e = p("[databases]\n\"unterminated = x\n").unwrap_err();
        assert_eq!(e.at.line, 2);
        let e = p("[pgbouncer]\n%include /nonexistent/pgward-test.ini\n").unwrap_err();
        assert_eq!(e.at.line, 2);
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn includes_are_read_in_place_relative_to_the_including_file() {
        let dir = std::env::temp_dir().join(format!("pgward-ini-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("main.ini"),
            "[pgbouncer]\nlisten_port = 1\n%include sub/extra.ini\nmax_client_conn = 3\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sub/extra.ini"),
            "pool_mode = session\n[databases]\nd = host=h\n[pgbouncer]\n",
        )
        .unwrap();
        let e = read(&dir.join("main.ini")).unwrap();
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["listen_port", "pool_mode", "d", "max_client_conn"]);
        assert!(e[1].at.file.ends_with("sub/extra.ini") && e[1].at.line == 1);
        // Cycles are refused, not followed forever.
        std::fs::write(dir.join("sub/extra.ini"), "%include ../main.ini\n").unwrap();
        let err = read(&dir.join("main.ini")).unwrap_err();
        assert!(err.message.contains("cycle"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
