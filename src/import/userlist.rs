//! PgBouncer's `auth_file` (userlist.txt): one `"user" "secret"` pair a line, `""` standing
//! for a quote inside either string. The secret is a plaintext password, an md5 hash or a
//! SCRAM-SHA-256 verifier, the same three forms pgward's `[[users]] password` accepts.
//!
//! Blank lines and lines starting with `;` or `#` are comments. Any other line that is not
//! two quoted strings is reported (by line, never by content) and skipped.

use std::path::Path;

use super::ini::Origin;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub secret: String,
    pub at: Origin,
}

/// The users, and one message per line that could not be read.
pub fn parse(text: &str, path: &Path) -> (Vec<UserEntry>, Vec<(Origin, String)>) {
    let file = path.display().to_string();
    let mut users = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let at = Origin {
            file: file.clone(),
            line: i + 1,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        match two_quoted(line) {
            Some((name, secret)) if !name.is_empty() => users.push(UserEntry { name, secret, at }),
            _ => bad.push((
                at,
                "not a `\"user\" \"password\"` line; skipped".to_string(),
            )),
        }
    }
    (users, bad)
}

fn two_quoted(line: &str) -> Option<(String, String)> {
    let (a, rest) = quoted(line)?;
    let (b, rest) = quoted(rest.trim_start())?;
    rest.trim().is_empty().then_some((a, b))
}

/// A `"…"` string at the start of `s` and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let body = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut it = body.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '"' {
            if matches!(it.peek(), Some((_, '"'))) {
                it.next();
                out.push('"');
                continue;
            }
            return Some((out, &body[i + 1..]));
        }
        out.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_and_reports_bad_lines() {
        let text = "; comment\n\"app\" \"pw\"\n\"q\"\"uote\" \"md5aaaa\"\n\nbroken line\n\"x\" \"unterminated\n";
        let (users, bad) = parse(text, Path::new("userlist.txt"));
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0].name.as_str(), users[0].secret.as_str()),
            ("app", "pw")
        );
        assert_eq!(users[0].at.line, 2);
        assert_eq!(users[1].name, "q\"uote");
        assert_eq!(bad.len(), 2);
        assert_eq!((bad[0].0.line, bad[1].0.line), (5, 6));
        assert!(!bad[1].1.contains("unterminated"));
    }
}
