//! The `upstream` URL of a database: libpq-style `postgres://user:pw@host:port/db?sslmode=…`.

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Credentials for PostgreSQL taken from a client's own authentication (auth_query users):
/// the SCRAM ClientKey recovered from the client's proof plus the stored verifier, or the md5
/// hash. pgward never learns the plaintext password.
#[derive(Clone)]
pub enum PassThrough {
    Scram {
        client_key: [u8; 32],
        verifier: crate::auth::ScramVerifier,
    },
    Md5 {
        hash: [u8; 16],
    },
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Identity only (changes when the user's credentials change), never the secret.
        let tag = match self {
            PassThrough::Scram { verifier, .. } => {
                format!("scram:{}", verifier.to_pg_string().len())
            }
            PassThrough::Md5 { .. } => "md5".to_string(),
        };
        write!(f, "PassThrough({tag})")
    }
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// Set for pools of auth_query users: authenticate with the client's credentials.
    pub pass_through: Option<PassThrough>,
    /// `baseline_role` of the database: the session's role from the startup packet on, so
    /// that RESET ROLE, SET SESSION AUTHORIZATION DEFAULT and DISCARD ALL return to it.
    pub baseline_role: Option<String>,
}

impl Upstream {
    /// The `options` startup parameter for the baseline role, if any: `-c role=NAME`, with
    /// spaces and backslashes escaped as PostgreSQL's options parser expects.
    pub fn startup_options(&self) -> Option<String> {
        let r = self.baseline_role.as_ref()?;
        let mut v = String::from("-c role=");
        for c in r.chars() {
            if c == ' ' || c == '\\' {
                v.push('\\');
            }
            v.push(c);
        }
        Some(v)
    }

    pub fn parse(s: &str) -> Result<Upstream, String> {
        let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(format!(
                "scheme must be postgres:// or postgresql://, got {}://",
                url.scheme()
            ));
        }
        let decode = |v: &str| {
            url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let host = url
            .host_str()
            .ok_or("missing host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = decode(url.username());
        if user.is_empty() {
            return Err("missing user name (postgres://USER:PASSWORD@host/db)".into());
        }
        let dbname = decode(url.path().trim_start_matches('/'));
        let mut up = Upstream {
            host,
            port: url.port().unwrap_or(5432),
            dbname: if dbname.is_empty() {
                user.clone()
            } else {
                dbname
            },
            user,
            password: url.password().map(decode),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            pass_through: None,
            baseline_role: None,
        };
        for (k, v) in url.query_pairs() {
            match &*k {
                "sslmode" => {
                    up.sslmode = match &*v {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(format!("unknown sslmode {other:?}")),
                    }
                }
                "sslrootcert" => up.sslrootcert = Some(PathBuf::from(&*v)),
                "password" => up.password = Some(v.into_owned()),
                "user" => up.user = v.into_owned(),
                "dbname" => up.dbname = v.into_owned(),
                other => return Err(format!("unsupported parameter {other:?}")),
            }
        }
        Ok(up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let u = Upstream::parse(
            "postgres://pg%40ward:s%3Acret@db.local:6543/app?sslmode=verify-full&sslrootcert=/ca.crt",
        )
        .unwrap();
        assert_eq!(u.user, "pg@ward");
        assert_eq!(u.password.as_deref(), Some("s:cret"));
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str()),
            ("db.local", 6543, "app")
        );
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert!(Upstream::parse("mysql://x@y/z").is_err());
        assert!(Upstream::parse("postgres://y/z").is_err());
        assert!(Upstream::parse("postgres://u@y/z?sslmode=bogus").is_err());
    }
}
