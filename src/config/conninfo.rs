//! libpq-style connection strings: `key=value` pairs separated by blanks (upstreams in this
//! form, and PgBouncer's `[databases]` values read by `import-pgbouncer`).
//!
//! A value is either a bare word (up to the next blank) or single-quoted, where `''` and `\'`
//! stand for a quote and `\\` for a backslash. Keys are lower-cased. Errors never quote a
//! value (it may be a password).

/// Parse `host=db port=5432 password='it''s'` into (key, value) pairs, in order.
pub fn parse(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("expected `=` after `{key}`"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if key.is_empty() {
            return Err("empty parameter name before `=`".into());
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of `{key}`")),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value of `{key}`")),
                    },
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(format!("a blank must follow the quoted value of `{key}`"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn kv(s: &str) -> Vec<(String, String)> {
        parse(s).unwrap()
    }

    #[test]
    fn bare_and_quoted_values() {
        assert_eq!(
            kv("host=db  Port=6543 dbname = app"),
            [("host", "db"), ("port", "6543"), ("dbname", "app")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let v = kv(r"password='it''s a \'pw\' \\ #;' user=u connect_query='SELECT 1'");
        assert_eq!(v[0].1, r"it's a 'pw' \ #;");
        assert_eq!(v[1], ("user".into(), "u".into()));
        assert_eq!(v[2].1, "SELECT 1");
        assert!(kv("").is_empty());
        assert_eq!(kv("password=")[0].1, "");
    }

    #[test]
    fn errors_do_not_show_values() {
        let e = parse("password='secret").unwrap_err();
        assert!(e.contains("unterminated") && !e.contains("secret"), "{e}");
        assert!(parse("host").is_err());
        assert!(parse("=x").is_err());
        assert!(parse("password='a'b").is_err());
    }
}
