//! Configuration: TOML → [`RawConfig`] (serde) → validated, immutable [`Config`].
//!
//! Invariants:
//! - A `Config` that exists is valid: every reference (tenant → database, admin user, tenant
//!   users) resolves, every duration and address parsed.
//! - Errors name the file and the key (`pool.mode`, `databases[1].upstream`).
//! - The running proxy holds an `Arc<Config>`; reload builds a new one and swaps it whole.

pub mod access;
pub mod conninfo;
pub mod env;
mod raw;
mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use raw::{render_effective, RawConfig};
pub use upstream::{Host, PassThrough, ServerKind, SslMode, TargetSessionAttrs, Upstream};

use crate::auth::secret::Secret;

#[derive(Debug, thiserror::Error)]
#[error("config error in {file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

/// What to do when a client leaves session state on a server connection (T2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatePolicy {
    Reset,
    Pin,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTls {
    Disable,
    Allow,
    Require,
}

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_size: usize,
    pub checkout_timeout: Duration,
    pub idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub connect_timeout: Duration,
    pub session_state: SessionStatePolicy,
    pub max_prepared_statements: usize,
    /// Zero: no limit.
    pub query_timeout: Duration,
    /// Zero: no limit.
    pub idle_transaction_timeout: Duration,
    pub server_login_retry: Duration,
    pub ready_probe_timeout: Duration,
    /// Serve waiters by fair sharing between tenants (else first come first served).
    pub fair_sharing: bool,
    /// Window of `SHOW STATS_AVERAGES` (top-level `stats_period`).
    pub stats_period: Duration,
    pub tcp: TcpSettings,
}

/// Socket options of server connections (dead-peer detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// Zero: no keepalive.
    pub keepidle: Duration,
    pub keepintvl: Duration,
    pub keepcnt: u32,
    /// Zero: the kernel's default.
    pub user_timeout: Duration,
}

#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub upstream: Upstream,
    pub pool: PoolSettings,
    pub tenant_required: bool,
    /// What to do when statements without a tenant context would run as a role that can
    /// bypass row-level security (T5).
    pub role_check: RoleCheck,
    /// Limits of its tenants that set none of their own.
    pub tenant_defaults: TenantDefaults,
}

/// A database's defaults for the limits of its tenants (`crate::tenancy::limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TenantDefaults {
    pub max_server_connections: Option<crate::tenancy::limits::ServerCap>,
    pub max_client_connections: Option<usize>,
}

/// The check, at start and reload, of the role a statement without its tenant's context
/// would run as (the baseline role, else the upstream login role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleCheck {
    /// Log a warning, show it in SHOW DATABASES and /ready.
    Warn,
    /// The same, and refuse tenant clients of that database.
    Strict,
    Off,
}

#[derive(Debug)]
pub struct User {
    pub name: String,
    /// `None`: trust (no password asked).
    pub secret: Option<Secret>,
    /// Method offered to the client.
    pub auth: AuthMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Trust,
    Password,
    Md5,
    ScramSha256,
}

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub database: String,
    pub search_path: Vec<String>,
    pub settings: BTreeMap<String, String>,
    pub role: Option<String>,
    /// `None`: every configured user may select this tenant.
    pub users: Option<Vec<String>>,
    pub limits: crate::tenancy::limits::TenantLimits,
    /// Its own upstream instead of its database's (`crate::tenancy::dedicated`).
    pub dedicated: Option<Arc<crate::tenancy::dedicated::Dedicated>>,
}

#[derive(Debug)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_tls: ClientTls,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug)]
pub struct MetricsSettings {
    /// Tenants beyond this many get `tenant="other"` on histograms.
    pub tenant_label_cap: usize,
    pub buckets: Vec<f64>,
    pub slow_statement_threshold: Option<Duration>,
    pub query_stats: bool,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct AuthQuery {
    pub upstream: String,
    pub query: String,
    pub cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct TenantQuery {
    pub upstream: String,
    pub query: String,
    pub refresh: Duration,
}

#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub admin_users: Vec<String>,
    pub workers: usize,
    pub max_client_connections: usize,
    pub max_message_size: usize,
    pub log_format: String,
    pub listen_backlog: u32,
    /// Where a successor process asks this one to hand over (docs/operations.md).
    pub upgrade_socket: Option<PathBuf>,
    pub client_login_timeout: Duration,
    pub max_pending_logins: usize,
    pub databases: Vec<Arc<Database>>,
    pub users: HashMap<String, Arc<User>>,
    pub tenants: HashMap<String, Arc<Tenant>>,
    pub tls: Option<TlsSettings>,
    pub metrics: MetricsSettings,
    pub tenant_query: Option<TenantQuery>,
    pub access: Vec<access::AccessRule>,
    pub auth_query: Option<AuthQuery>,
    /// The raw form, for `check-config` and `SHOW CONFIG`.
    pub raw: RawConfig,
    /// Values that came from the environment (`${NAME}`, `PGWARD_…`): key and variable
    /// names, never values.
    pub origins: Vec<env::Origin>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate `text`, with `${NAME}` references and `PGWARD_…` overrides from
    /// the process environment ([`env`]).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, path, &|k| std::env::var(k).ok())
    }

    /// [`Config::from_toml`] reading variables with `var`.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let with_line = |e: toml::de::Error| {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(syntax)".into());
            ConfigError {
                file: file.clone(),
                key,
                message: e.message().to_string(),
            }
        };
        // Syntax and type errors first, with their line, before anything is replaced.
        toml::from_str::<RawConfig>(text).map_err(with_line)?;
        let mut doc = toml::Value::Table(toml::from_str::<toml::Table>(text).map_err(with_line)?);
        let origins = env::apply(&mut doc, var).map_err(|(key, message)| ConfigError {
            file: file.clone(),
            key,
            message,
        })?;
        let raw: RawConfig = doc.try_into().map_err(|e: toml::de::Error| ConfigError {
            file: file.clone(),
            key: "(environment)".into(),
            message: e.message().to_string(),
        })?;
        let mut config = raw::validate(raw, path)?;
        config.origins = origins;
        Ok(config)
    }

    /// This configuration with one value changed (`SET` of the admin console): `key` is a
    /// dotted path (`pool.size`, `client_login_timeout`); validated like a file.
    pub fn with_value(&self, key: &str, value: toml::Value) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            file: self.path.display().to_string(),
            key: key.to_string(),
            message,
        };
        let mut doc = toml::Value::try_from(&self.raw).map_err(|e| fail(e.to_string()))?;
        let mut at = &mut doc;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let table = at
                .as_table_mut()
                .ok_or_else(|| fail("not a table".into()))?;
            if parts.peek().is_none() {
                table.insert(part.to_string(), value);
                break;
            }
            at = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        let raw: RawConfig = doc
            .try_into()
            .map_err(|e: toml::de::Error| fail(e.message().to_string()))?;
        let mut config = raw::validate(raw, &self.path)?;
        config.origins = self.origins.clone();
        Ok(config)
    }

    pub fn database(&self, name: &str) -> Option<&Arc<Database>> {
        self.databases.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use std::time::Duration;

    const BASE: &str = r#"
        listen = "127.0.0.1:6432"
        [pool]
        query_timeout = "30s"
        [[databases]]
        name = "app"
        upstream = "postgres://u@127.0.0.1/app"
        [[databases]]
        name = "reports"
        upstream = "postgres://u@127.0.0.1/app"
        query_timeout = "10m"
        idle_transaction_timeout = "1m"
    "#;

    #[test]
    fn timeouts_are_overridden_per_database() {
        let c = Config::from_toml(BASE, std::path::Path::new("t.toml")).unwrap();
        let app = &c.database("app").unwrap().pool;
        assert_eq!(app.query_timeout, Duration::from_secs(30));
        assert_eq!(app.idle_transaction_timeout, Duration::ZERO);
        let reports = &c.database("reports").unwrap().pool;
        assert_eq!(reports.query_timeout, Duration::from_secs(600));
        assert_eq!(reports.idle_transaction_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_timeout_names_its_key() {
        let bad = BASE.replace("\"10m\"", "\"soon\"");
        let e = Config::from_toml(&bad, std::path::Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "databases[1].query_timeout");
        assert!(e.message.contains("not a duration"), "{}", e.message);
    }

    #[test]
    fn a_tenant_may_have_its_own_upstream() {
        let ok = format!(
            "{BASE}\n[[tenants]]\nid = \"bigco\"\ndatabase = \"app\"\nupstream = \"postgres://big:pw@db2:6543/bigco?sslmode=require\"\npool_size = 3\nqueue_timeout = \"250ms\"\n"
        );
        let c = Config::from_toml(&ok, std::path::Path::new("t.toml")).unwrap();
        let t = &c.tenants["bigco"];
        let d = t.dedicated.as_ref().unwrap();
        assert_eq!((d.upstream.host.as_str(), d.upstream.port), ("db2", 6543));
        assert_eq!(d.pool_size, Some(3));
        assert_eq!(t.limits.queue_timeout, Some(Duration::from_millis(250)));
        for (bad, key) in [
            ("upstream = \"nope\"", "tenants[0].upstream"),
            (
                "upstream = \"postgres://u@h/x\"\npool_size = 0",
                "tenants[0].pool_size",
            ),
            ("pool_size = 2", "tenants[0].pool_size"),
            ("queue_timeout = \"0s\"", "tenants[0].queue_timeout"),
        ] {
            let text = format!("{BASE}\n[[tenants]]\nid = \"t\"\ndatabase = \"app\"\n{bad}\n");
            let e = Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap_err();
            assert_eq!(e.key, key, "{bad}: {}", e.message);
        }
    }

    #[test]
    fn environment_values_are_used_and_never_rendered() {
        let text = format!("{BASE}\n[[users]]\nname = \"u\"\npassword = \"${{U_PW}}\"\n").replace(
            "postgres://u@127.0.0.1/app\"\n        [[databases]]",
            "postgres://u:${DB_PW}@127.0.0.1/app\"\n        [[databases]]",
        );
        let var = |k: &str| match k {
            "U_PW" => Some("user-secret".to_string()),
            "DB_PW" => Some("db-secret".to_string()),
            _ => None,
        };
        let c = Config::from_toml_with_env(&text, std::path::Path::new("t.toml"), &var).unwrap();
        assert_eq!(
            c.database("app").unwrap().upstream.password.as_deref(),
            Some("db-secret")
        );
        let shown = super::render_effective(&c);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("${U_PW}") && shown.contains("${DB_PW}"),
            "{shown}"
        );
        let e = Config::from_toml_with_env(&text, std::path::Path::new("t.toml"), &|_| None)
            .unwrap_err();
        assert_eq!(e.key, "databases[0].upstream");
    }
}
