//! Settings from the environment, for Kubernetes Secrets and sidecars:
//!
//! - `${NAME}` in any string value of the file is replaced by the environment variable `NAME`
//!   (`$${` writes a literal `${`). An unset variable is a configuration error naming the key
//!   and the variable.
//! - `PGWARD_LISTEN`, `PGWARD_HTTP_LISTEN`, `PGWARD_POOL_SIZE` and `PGWARD_UPSTREAM` (the only
//!   `[[databases]]` entry's upstream) override the file's value.
//!
//! Invariant: what came from the environment is recorded as (key, origin) with the variable's
//! name only — never its value — for `pgward check-config`.

use toml::Value;

/// Where a configuration value came from, when not (only) from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The key, as in configuration errors (`databases[0].upstream`).
    pub key: String,
    /// `${NAME}` references it contains, or the `PGWARD_…` variable that replaced it.
    pub from: String,
    /// The file's text of a value with references (shown instead of the value: it may be a
    /// secret); `None` for a `PGWARD_…` override.
    pub template: Option<String>,
}

/// Show the file's `${NAME}` text in place of the values it produced, in a rendered
/// configuration (`check-config`, `SHOW CONFIG`): a referenced value may be a secret.
pub fn restore_templates(doc: &mut Value, origins: &[Origin]) {
    for o in origins {
        if let (Some(t), Some(slot)) = (&o.template, at_key(doc, &o.key)) {
            *slot = Value::String(t.clone());
        }
    }
}

/// The value at a key as errors spell it (`databases[0].upstream`).
fn at_key<'a>(doc: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let mut v = doc;
    for part in key.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        v = v.get_mut(name)?;
        for idx in indexes.split(']').filter(|x| !x.is_empty()) {
            v = v.get_mut(idx.trim_start_matches('[').parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// An error: (key, message).
pub type EnvError = (String, String);

/// Apply `${NAME}` references and `PGWARD_…` overrides to a parsed file, reading variables
/// with `var`.
pub fn apply(
    doc: &mut Value,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Origin>, EnvError> {
    let mut origins = Vec::new();
    expand(doc, String::new(), var, &mut origins)?;
    overrides(doc, var, &mut origins)?;
    Ok(origins)
}

fn expand(
    v: &mut Value,
    key: String,
    var: &dyn Fn(&str) -> Option<String>,
    origins: &mut Vec<Origin>,
) -> Result<(), EnvError> {
    match v {
        Value::String(s) if s.contains('$') => {
            let (out, names) = substitute(s, var).map_err(|m| (key.clone(), m))?;
            if !names.is_empty() {
                origins.push(Origin {
                    template: Some(s.clone()),
                    key,
                    from: names
                        .iter()
                        .map(|n| format!("${{{n}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            *s = out;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, format!("{key}[{i}]"), var, origins)?;
            }
        }
        Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let sub = match key.is_empty() {
                    true => k.clone(),
                    false => format!("{key}.{k}"),
                };
                expand(item, sub, var, origins)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `s` with `${NAME}` replaced; the names used.
fn substitute(
    s: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix("${") {
            out.push_str("${"); // `$${` is a literal `${`
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| "unterminated ${ (write $${ for a literal ${)".to_string())?;
            let name = &r[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("${{{name}}}: not an environment variable name"));
            }
            let value = var(name).ok_or_else(|| {
                format!("environment variable {name} is not set (referenced as ${{{name}}})")
            })?;
            out.push_str(&value);
            names.push(name.to_string());
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, names))
}

fn overrides(
    doc: &mut Value,
    var: &dyn Fn(&str) -> Option<String>,
    origins: &mut Vec<Origin>,
) -> Result<(), EnvError> {
    let Some(root) = doc.as_table_mut() else {
        return Ok(());
    };
    let mut set = |key: &str, from: &str, slot: &mut toml::Table, name: &str, v: Value| {
        slot.insert(name.to_string(), v);
        origins.retain(|o| o.key != key);
        origins.push(Origin {
            key: key.to_string(),
            from: from.to_string(),
            template: None,
        });
    };
    for (env, key) in [
        ("PGWARD_LISTEN", "listen"),
        ("PGWARD_HTTP_LISTEN", "http_listen"),
    ] {
        if let Some(v) = var(env) {
            set(key, env, root, key, Value::String(v));
        }
    }
    if let Some(v) = var("PGWARD_POOL_SIZE") {
        let n: i64 = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            (
                "PGWARD_POOL_SIZE".to_string(),
                format!("{v:?}: must be a number of connections, at least 1"),
            )
        })?;
        let pool = root
            .entry("pool")
            .or_insert_with(|| Value::Table(Default::default()));
        let Some(pool) = pool.as_table_mut() else {
            return Err(("pool".into(), "must be a table".into()));
        };
        set(
            "pool.size",
            "PGWARD_POOL_SIZE",
            pool,
            "size",
            Value::Integer(n),
        );
    }
    if let Some(v) = var("PGWARD_UPSTREAM") {
        let dbs = root.get_mut("databases").and_then(Value::as_array_mut);
        match dbs {
            Some(list) if list.len() == 1 => {
                let Some(db) = list[0].as_table_mut() else {
                    return Err(("databases[0]".into(), "must be a table".into()));
                };
                set(
                    "databases[0].upstream",
                    "PGWARD_UPSTREAM",
                    db,
                    "upstream",
                    Value::String(v),
                );
            }
            other => {
                let n = other.map_or(0, |l| l.len());
                return Err((
                    "PGWARD_UPSTREAM".into(),
                    format!("replaces the upstream of the only [[databases]] entry, but the file has {n}; use ${{NAME}} references in each entry instead"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn references_are_replaced_and_recorded_by_name() {
        let mut doc: Value = toml::from_str(
            r#"
            listen = "127.0.0.1:6432"
            [[databases]]
            name = "app"
            upstream = "postgres://pgward:${DB_PW}@${DB_HOST}:5432/app"
            [[users]]
            name = "u"
            password = "${U_PW}"
            note = "costs $5 and $${LITERAL}"
            "#,
        )
        .unwrap();
        let origins = apply(
            &mut doc,
            &env(&[("DB_PW", "s3cr3t"), ("DB_HOST", "db"), ("U_PW", "pw")]),
        )
        .unwrap();
        assert_eq!(
            doc["databases"][0]["upstream"].as_str(),
            Some("postgres://pgward:s3cr3t@db:5432/app")
        );
        assert_eq!(doc["users"][0]["password"].as_str(), Some("pw"));
        assert_eq!(
            doc["users"][0]["note"].as_str(),
            Some("costs $5 and ${LITERAL}")
        );
        assert_eq!(
            origins,
            vec![
                Origin {
                    key: "databases[0].upstream".into(),
                    from: "${DB_PW}, ${DB_HOST}".into(),
                    template: Some("postgres://pgward:${DB_PW}@${DB_HOST}:5432/app".into()),
                },
                Origin {
                    key: "users[0].password".into(),
                    from: "${U_PW}".into(),
                    template: Some("${U_PW}".into()),
                },
            ]
        );
        let text = format!("{origins:?}");
        assert!(!text.contains("s3cr3t"), "values are never recorded");
        restore_templates(&mut doc, &origins);
        assert_eq!(
            doc["databases"][0]["upstream"].as_str(),
            Some("postgres://pgward:${DB_PW}@${DB_HOST}:5432/app")
        );
        assert_eq!(doc["users"][0]["password"].as_str(), Some("${U_PW}"));
    }

    #[test]
    fn an_unset_or_bad_reference_names_the_key() {
        let mut doc: Value = toml::from_str("[pool]\nmode = \"${MODE}\"").unwrap();
        let e = apply(&mut doc, &env(&[])).unwrap_err();
        assert_eq!(e.0, "pool.mode");
        assert!(e.1.contains("MODE is not set"), "{}", e.1);
        for bad in ["${}", "${1X}", "${A-B}", "${OPEN"] {
            let mut doc: Value = toml::from_str(&format!("listen = \"{bad}\"")).unwrap();
            assert_eq!(apply(&mut doc, &env(&[])).unwrap_err().0, "listen", "{bad}");
        }
    }

    #[test]
    fn pgward_variables_override_the_file() {
        let mut doc: Value = toml::from_str(
            "listen = \"${L}\"\n[[databases]]\nname = \"app\"\nupstream = \"postgres://a@h/app\"\n",
        )
        .unwrap();
        let origins = apply(
            &mut doc,
            &env(&[
                ("L", "x"),
                ("PGWARD_LISTEN", "0.0.0.0:6432"),
                ("PGWARD_POOL_SIZE", "7"),
                ("PGWARD_UPSTREAM", "postgres://b@h2/app"),
            ]),
        )
        .unwrap();
        assert_eq!(doc["listen"].as_str(), Some("0.0.0.0:6432"));
        assert_eq!(doc["pool"]["size"].as_integer(), Some(7));
        assert_eq!(
            doc["databases"][0]["upstream"].as_str(),
            Some("postgres://b@h2/app")
        );
        let from: Vec<_> = origins
            .iter()
            .map(|o| (o.key.as_str(), o.from.as_str()))
            .collect();
        assert_eq!(
            from,
            vec![
                ("listen", "PGWARD_LISTEN"),
                ("pool.size", "PGWARD_POOL_SIZE"),
                ("databases[0].upstream", "PGWARD_UPSTREAM")
            ]
        );
        let e = apply(&mut doc.clone(), &env(&[("PGWARD_POOL_SIZE", "0")])).unwrap_err();
        assert_eq!(e.0, "PGWARD_POOL_SIZE");
        let mut two: Value = toml::from_str(
            "[[databases]]\nname = \"a\"\nupstream = \"x\"\n[[databases]]\nname = \"b\"\nupstream = \"y\"\n",
        )
        .unwrap();
        let e = apply(&mut two, &env(&[("PGWARD_UPSTREAM", "z")])).unwrap_err();
        assert_eq!(e.0, "PGWARD_UPSTREAM");
    }
}
