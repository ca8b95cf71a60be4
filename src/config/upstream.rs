//! The `upstream` of a database, in either of libpq's forms: a URL
//! `postgres://user:pw@host:port[,host2:port2…]/db?sslmode=…&target_session_attrs=…`, or a
//! connection string `host=a,b port=5432,5433 user=… dbname=…`.
//!
//! Several hosts are tried in order (or shuffled: `load_balance_hosts=random`), each bounded by
//! `connect_timeout` (seconds, libpq's meaning), until one of the kind `target_session_attrs`
//! asks for answers; a DNS name that resolves to several addresses counts as several hosts
//! (`crate::server::connect`). `host`/`port` are the first host's, for display.

use std::path::PathBuf;
use std::time::Duration;

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

/// One host of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Host {
    pub name: String,
    pub port: u16,
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.contains(':') {
            true => write!(f, "[{}]:{}", self.name, self.port),
            false => write!(f, "{}:{}", self.name, self.port),
        }
    }
}

/// libpq's `target_session_attrs`: which kind of server a connection must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn parse(v: &str) -> Result<Self, String> {
        Ok(match v {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            other => {
                return Err(format!(
                    "target_session_attrs {other:?}: must be any, read-write, read-only, primary, standby or prefer-standby"
                ))
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
    /// Connections must reach a server that accepts writes: one that stops doing so (a
    /// demoted primary) is left (`crate::pool` closes its connections).
    pub fn needs_writes(self) -> bool {
        matches!(self, Self::ReadWrite | Self::Primary)
    }
}

/// What a server said it is: `in_hot_standby` and `default_transaction_read_only` (both
/// reported by PostgreSQL 14 and later; queried on older servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerKind {
    pub standby: bool,
    pub read_only: bool,
}

impl ServerKind {
    /// Whether a server of this kind suits `t`; `strict`: the first pass of prefer-standby,
    /// which takes only standbys.
    pub fn suits(self, t: TargetSessionAttrs, strict: bool) -> bool {
        match t {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !self.standby && !self.read_only,
            TargetSessionAttrs::ReadOnly => self.standby || self.read_only,
            TargetSessionAttrs::Primary => !self.standby,
            TargetSessionAttrs::Standby => self.standby,
            TargetSessionAttrs::PreferStandby => self.standby || !strict,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Upstream {
    /// The first host (display, logs).
    pub host: String,
    pub port: u16,
    /// Every host, in the order given.
    pub hosts: Vec<Host>,
    pub target_session_attrs: TargetSessionAttrs,
    /// `load_balance_hosts=random`: try the hosts in a random order.
    pub load_balance: bool,
    /// libpq's `connect_timeout`: the bound of one host's attempt (else the pool's
    /// `connect_timeout`).
    pub host_connect_timeout: Option<Duration>,
    /// The database's `max_replica_lag`: a standby whose replay is further behind is not
    /// used (not even as a fallback), and connections to one that falls behind are left.
    pub max_replica_lag: Option<Duration>,
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

    /// The hosts as text: `a:5432,b:5433`.
    pub fn hosts_text(&self) -> String {
        let v: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        v.join(",")
    }

    pub fn parse(s: &str) -> Result<Upstream, String> {
        match s.contains("://") {
            true => Self::parse_url(s),
            false => Self::parse_conninfo(s),
        }
    }

    fn empty() -> Upstream {
        Upstream {
            host: String::new(),
            port: 5432,
            hosts: Vec::new(),
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance: false,
            host_connect_timeout: None,
            max_replica_lag: None,
            user: String::new(),
            password: None,
            dbname: String::new(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            pass_through: None,
            baseline_role: None,
        }
    }

    /// A setting shared by both forms; `false` if `key` is not one.
    fn set(&mut self, key: &str, v: &str) -> Result<bool, String> {
        match key {
            "sslmode" => {
                self.sslmode = match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(format!("unknown sslmode {other:?}")),
                }
            }
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(v)),
            "password" => self.password = Some(v.to_string()),
            "user" => self.user = v.to_string(),
            "dbname" => self.dbname = v.to_string(),
            "target_session_attrs" => self.target_session_attrs = TargetSessionAttrs::parse(v)?,
            "load_balance_hosts" => {
                self.load_balance = match v {
                    "disable" => false,
                    "random" => true,
                    other => {
                        return Err(format!(
                            "load_balance_hosts {other:?}: must be disable or random"
                        ))
                    }
                }
            }
            "connect_timeout" => {
                // libpq: whole seconds; 0 or absent = no bound of its own; 1 counts as 2.
                let secs: u64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("connect_timeout {v:?}: must be a number of seconds"))?;
                self.host_connect_timeout = match secs {
                    0 => None,
                    n => Some(Duration::from_secs(n.max(2))),
                };
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Fill `host`/`port` from the first host, and default the database name.
    fn finish(mut self) -> Result<Upstream, String> {
        let first = self.hosts.first().ok_or("missing host")?.clone();
        (self.host, self.port) = (first.name, first.port);
        if self.user.is_empty() {
            return Err("missing user name (postgres://USER:PASSWORD@host/db)".into());
        }
        if self.dbname.is_empty() {
            self.dbname = self.user.clone();
        }
        Ok(self)
    }

    /// `postgres://[user[:password]@]host[:port][,host[:port]…][/dbname][?param=value&…]`
    fn parse_url(s: &str) -> Result<Upstream, String> {
        // The url crate takes one host: the host list is split off and the first host put
        // back for it.
        let (scheme, rest) = s.split_once("://").ok_or("not a URL")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(i) => (&authority[..=i], &authority[i + 1..]),
            None => ("", authority),
        };
        let mut hosts = Vec::new();
        for h in hostlist.split(',') {
            hosts.push(parse_host(h)?);
        }
        let first = hostlist.split(',').next().unwrap_or("");
        let url = url::Url::parse(&format!("{scheme}://{userinfo}{first}{tail}"))
            .map_err(|e| format!("not a URL: {e}"))?;
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
        let mut up = Upstream {
            hosts,
            user: decode(url.username()),
            password: url.password().map(decode),
            dbname: decode(url.path().trim_start_matches('/')),
            ..Upstream::empty()
        };
        for (k, v) in url.query_pairs() {
            if !up.set(&k, &v)? {
                return Err(format!("unsupported parameter {k:?}"));
            }
        }
        up.finish()
    }

    /// `host=a,b port=5432,5433 user=… password=… dbname=… sslmode=…`
    fn parse_conninfo(s: &str) -> Result<Upstream, String> {
        let mut up = Upstream::empty();
        let (mut names, mut ports) = (Vec::new(), Vec::new());
        for (k, v) in super::conninfo::parse(s)? {
            match k.as_str() {
                "host" => names = v.split(',').map(str::to_string).collect(),
                "port" => {
                    ports = v
                        .split(',')
                        .map(|p| {
                            p.trim()
                                .parse::<u16>()
                                .map_err(|_| format!("bad port {p:?}"))
                        })
                        .collect::<Result<_, _>>()?
                }
                _ if up.set(&k, &v)? => {}
                other => return Err(format!("unsupported parameter {other:?}")),
            }
        }
        if names.is_empty() {
            return Err("missing host (host=…)".into());
        }
        // libpq: one port for every host, or one per host.
        let port = |i: usize| match ports.len() {
            0 => Ok(5432),
            1 => Ok(ports[0]),
            n if n == names.len() => Ok(ports[i]),
            _ => Err(format!("{} hosts but {} ports", names.len(), ports.len())),
        };
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() || n.starts_with('/') {
                return Err(format!("host {n:?}: a TCP host name or address is needed"));
            }
            up.hosts.push(Host {
                name: n.clone(),
                port: port(i)?,
            });
        }
        up.finish()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` of a URL's host list.
fn parse_host(h: &str) -> Result<Host, String> {
    let (name, port) = match h.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("unterminated [IPv6] host")?;
            (addr, after.strip_prefix(':'))
        }
        None => match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h, None),
        },
    };
    if name.is_empty() {
        return Err("missing host".into());
    }
    let port = match port {
        None | Some("") => 5432,
        Some(p) => p
            .parse()
            .map_err(|_| format!("invalid port number {p:?}"))?,
    };
    Ok(Host {
        name: name.to_string(),
        port,
    })
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

    #[test]
    fn parses_several_hosts_in_both_forms() {
        let u = Upstream::parse(
            "postgres://u:p@a:5433,b,[::1]:6000/app?target_session_attrs=read-write&load_balance_hosts=random&connect_timeout=3",
        )
        .unwrap();
        let hosts: Vec<String> = u.hosts.iter().map(|h| h.to_string()).collect();
        assert_eq!(hosts, ["a:5433", "b:5432", "[::1]:6000"]);
        assert_eq!((u.host.as_str(), u.port), ("a", 5433));
        assert_eq!(u.password.as_deref(), Some("p"));
        assert_eq!(u.dbname, "app");
        assert_eq!(u.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert!(u.load_balance);
        assert_eq!(u.host_connect_timeout, Some(Duration::from_secs(3)));

        let c = Upstream::parse(
            "host=a,b port=5432,5433 user=u password='x y' dbname=app target_session_attrs=prefer-standby",
        )
        .unwrap();
        assert_eq!(c.hosts_text(), "a:5432,b:5433");
        assert_eq!(c.password.as_deref(), Some("x y"));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::PreferStandby);
        let one_port = Upstream::parse("host=a,b port=6000 user=u").unwrap();
        assert_eq!(one_port.hosts_text(), "a:6000,b:6000");
        assert_eq!(one_port.dbname, "u");

        for bad in [
            "host=a,b port=1,2,3 user=u",
            "host=a user=u target_session_attrs=writable",
            "host=/tmp user=u",
            "port=5432 user=u",
            "postgres://u@a:x/db",
            "postgres://u@a/db?load_balance_hosts=yes",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_kinds_suit_targets_as_in_libpq() {
        let primary = ServerKind {
            standby: false,
            read_only: false,
        };
        let standby = ServerKind {
            standby: true,
            read_only: true,
        };
        let ro_primary = ServerKind {
            standby: false,
            read_only: true,
        };
        use TargetSessionAttrs::*;
        assert!(primary.suits(ReadWrite, false) && !standby.suits(ReadWrite, false));
        assert!(!ro_primary.suits(ReadWrite, false) && ro_primary.suits(Primary, false));
        assert!(standby.suits(ReadOnly, false) && ro_primary.suits(ReadOnly, false));
        assert!(standby.suits(Standby, false) && !primary.suits(Standby, false));
        assert!(!primary.suits(PreferStandby, true) && primary.suits(PreferStandby, false));
        assert!(primary.suits(Any, true) && standby.suits(Any, true));
    }
}
