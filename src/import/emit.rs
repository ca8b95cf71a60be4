//! The output document: pgward.toml as sections of `key = value` lines, each with a comment
//! saying where in the ini it came from, written as TOML text.
//!
//! Invariant: every string is written through the `toml` crate's quoting, and `${` is
//! written `$${` so that no imported value (a password with `${` in it) is read back as an
//! environment reference by `src/config/env.rs`.

use std::fmt::Write;

/// One `key = value` line.
#[derive(Clone, Debug)]
pub struct Line {
    pub key: String,
    pub value: toml::Value,
    /// Written after the value as `# …` (where it came from, or why this value).
    pub comment: String,
}

/// A section: the top level, `[pool]`, `[tls]`, `[auth_query]` or one `[[databases]]` /
/// `[[users]]` entry.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub lines: Vec<Line>,
}

impl Section {
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>, comment: impl Into<String>) {
        let line = Line {
            key: key.to_string(),
            value: value.into(),
            comment: comment.into(),
        };
        match self.lines.iter_mut().find(|l| l.key == key) {
            Some(l) => *l = line,
            None => self.lines.push(line),
        }
    }

    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.lines.iter().find(|l| l.key == key).map(|l| &l.value)
    }

    pub fn remove(&mut self, key: &str) {
        self.lines.retain(|l| l.key != key);
    }
}

/// The whole pgward.toml to write.
#[derive(Clone, Debug, Default)]
pub struct Document {
    pub header: Vec<String>,
    pub top: Section,
    pub pool: Section,
    pub tls: Option<Section>,
    pub auth_query: Option<Section>,
    pub databases: Vec<Section>,
    pub users: Vec<Section>,
}

impl Document {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for h in &self.header {
            let _ = writeln!(out, "# {h}");
        }
        if !self.header.is_empty() {
            out.push('\n');
        }
        lines(&mut out, &self.top);
        let table = |out: &mut String, name: &str, s: &Section| {
            let _ = writeln!(out, "\n{name}");
            lines(out, s);
        };
        if !self.pool.lines.is_empty() {
            table(&mut out, "[pool]", &self.pool);
        }
        for d in &self.databases {
            table(&mut out, "[[databases]]", d);
        }
        for u in &self.users {
            table(&mut out, "[[users]]", u);
        }
        if let Some(t) = &self.tls {
            table(&mut out, "[tls]", t);
        }
        if let Some(a) = &self.auth_query {
            table(&mut out, "[auth_query]", a);
        }
        out
    }
}

fn lines(out: &mut String, s: &Section) {
    for l in &s.lines {
        let v = escape_env(&l.value).to_string();
        if l.comment.is_empty() {
            let _ = writeln!(out, "{} = {v}", l.key);
        } else {
            let _ = writeln!(out, "{} = {v}  # {}", l.key, l.comment.replace('\n', " "));
        }
    }
}

fn escape_env(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::String(s) => toml::Value::String(s.replace("${", "$${")),
        toml::Value::Array(a) => toml::Value::Array(a.iter().map(escape_env).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sections_with_comments_and_escapes_env_references() {
        let mut d = Document::default();
        d.top
            .set("listen", "0.0.0.0:6432", "a.ini:3 listen_addr, listen_port");
        d.pool.set("size", 25_i64, "");
        let mut u = Section::default();
        u.set("name", "app", "");
        u.set("password", "p\"w${X}", "");
        d.users.push(u);
        let text = d.render();
        assert!(
            text.contains("listen = \"0.0.0.0:6432\"  # a.ini:3 listen_addr, listen_port\n"),
            "{text}"
        );
        assert!(text.contains("\n[pool]\nsize = 25\n"), "{text}");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let pw = parsed["users"][0]["password"].as_str().unwrap();
        assert_eq!(pw, "p\"w$${X}");
    }
}
