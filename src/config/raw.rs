//! The TOML shape (serde) and its validation into [`Config`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub http_listen: Option<String>,
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Tokio worker threads; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// Largest client message accepted, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// "human" or "json".
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// Pending connections the kernel queues for `listen` (PgBouncer's `listen_backlog`).
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
    /// Unix socket through which a new pgward process takes over this one's listeners and
    /// idle clients (zero-downtime upgrade); unset: no takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<String>,
    /// A client must have logged in (TLS, startup, authentication) within this.
    #[serde(default = "default_login_timeout")]
    pub client_login_timeout: String,
    /// Connections still logging in, at most; they do not count toward
    /// `max_client_connections` until their startup packet arrived.
    #[serde(default = "default_max_logins")]
    pub max_pending_logins: usize,
    /// Window of the admin console's averages (`SHOW STATS_AVERAGES`; PgBouncer's name).
    #[serde(default = "default_stats_period")]
    pub stats_period: String,

    #[serde(default)]
    pub pool: RawPool,
    #[serde(default)]
    pub databases: Vec<RawDatabase>,
    #[serde(default)]
    pub users: Vec<RawUser>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub tenant_query: Option<RawTenantQuery>,
    #[serde(default)]
    pub access: Vec<super::access::RawAccessRule>,
    #[serde(default)]
    pub auth_query: Option<RawAuthQuery>,
}

/// Users not in `[[users]]` looked up in PostgreSQL.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthQuery {
    /// libpq URL of the auth user's connection (no TLS: sslmode=disable or prefer).
    pub upstream: String,
    /// Takes the user name as $1; returns (name, secret) with the secret as in pg_authid.
    #[serde(default = "default_auth_query")]
    pub query: String,
    #[serde(default = "default_auth_cache_ttl")]
    pub cache_ttl: String,
}

fn default_auth_query() -> String {
    "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into()
}
fn default_auth_cache_ttl() -> String {
    "60s".into()
}

/// Tenants loaded from a SQL table in a control database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantQuery {
    /// libpq URL of the control database (no TLS: sslmode=disable or prefer).
    pub upstream: String,
    #[serde(default = "default_tenant_query")]
    pub query: String,
    #[serde(default = "default_tenant_refresh")]
    pub refresh: String,
}

fn default_tenant_query() -> String {
    "SELECT id, database, search_path, settings, role, users FROM pgward_tenants".into()
}
fn default_tenant_refresh() -> String {
    "30s".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_size")]
    pub size: usize,
    #[serde(default)]
    pub min_size: usize,
    #[serde(default = "default_max_clients")]
    pub max_client_connections: usize,
    #[serde(default = "default_checkout_timeout")]
    pub checkout_timeout: String,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    #[serde(default = "default_lifetime")]
    pub server_lifetime: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_session_state")]
    pub session_state: String,
    #[serde(default = "default_max_prepared")]
    pub max_prepared_statements: usize,
    /// A statement whose answer has not completed within this fails and its server
    /// connection is closed; "0" = no limit (PgBouncer's `query_timeout`).
    #[serde(default = "zero_duration")]
    pub query_timeout: String,
    /// A client that holds a transaction open and sends nothing for this long is
    /// disconnected; "0" = no limit (PgBouncer's `idle_transaction_timeout`).
    #[serde(default = "zero_duration")]
    pub idle_transaction_timeout: String,
    /// After a failed server connection attempt, no new one for this long; clients that
    /// need a connection meanwhile fail at once with 08006 (PgBouncer's `server_login_retry`).
    #[serde(default = "default_login_retry")]
    pub server_login_retry: String,
    /// TCP keepalive on server connections: idle time before the first probe ("0": off),
    /// interval between probes, and probes before the connection is dropped.
    #[serde(default = "default_keepidle")]
    pub tcp_keepidle: String,
    #[serde(default = "default_keepintvl")]
    pub tcp_keepintvl: String,
    #[serde(default = "default_keepcnt")]
    pub tcp_keepcnt: u32,
    /// TCP_USER_TIMEOUT on server connections: data unacknowledged this long drops the
    /// connection ("0": the kernel's default).
    #[serde(default = "default_user_timeout")]
    pub tcp_user_timeout: String,
    /// How long the readiness probe (`SELECT 1` on a server connection) may take.
    #[serde(default = "default_ready_timeout")]
    pub ready_probe_timeout: String,
    /// Waiting clients are served by fair sharing between tenants (default); `false`: first
    /// come first served across tenants.
    #[serde(default = "default_true")]
    pub fair_sharing: bool,
}

impl Default for RawPool {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub name: String,
    pub upstream: String,
    #[serde(default)]
    pub pool_size: Option<usize>,
    #[serde(default)]
    pub min_size: Option<usize>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default, alias = "required")]
    pub tenant_required: bool,
    /// Role the server connections take at session level (fail closed, T5).
    #[serde(default)]
    pub baseline_role: Option<String>,
    /// "warn" (default), "strict" or "off": the check of the role context-less statements
    /// run as.
    #[serde(default)]
    pub role_check: Option<String>,
    /// Overrides `pool.query_timeout` for this database.
    #[serde(default)]
    pub query_timeout: Option<String>,
    /// Overrides `pool.idle_transaction_timeout` for this database.
    #[serde(default)]
    pub idle_transaction_timeout: Option<String>,
    /// Default `max_server_connections` of its tenants.
    #[serde(default)]
    pub tenant_max_server_connections: Option<RawCap>,
    /// Default `max_client_connections` of its tenants.
    #[serde(default)]
    pub tenant_max_client_connections: Option<usize>,
    /// Standbys whose replay is further behind than this are not used (read routing).
    #[serde(default)]
    pub max_replica_lag: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    /// "scram-sha-256" | "md5" | "password" | "trust"; default from the password's form.
    #[serde(default)]
    pub auth: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    pub database: String,
    #[serde(default)]
    pub search_path: Vec<String>,
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub users: Option<Vec<String>>,
    /// Weight in the pool's fair queue (default 1).
    #[serde(default)]
    pub weight: Option<f64>,
    /// Server connections it may hold at once: a number or "N%" of the pool size.
    #[serde(default)]
    pub max_server_connections: Option<RawCap>,
    #[serde(default)]
    pub max_client_connections: Option<usize>,
    /// How long its clients may wait for a server connection (default: the pool's
    /// `checkout_timeout`).
    #[serde(default)]
    pub queue_timeout: Option<String>,
    /// Server connections of its database's pool set aside for it.
    #[serde(default)]
    pub reserved_server_connections: Option<usize>,
    /// Dedicated database: the tenant's own upstream instead of its database's.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Size of the dedicated pool (default: its database's pool size).
    #[serde(default)]
    pub pool_size: Option<usize>,
}

/// A number, or a string such as "25%".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawCap {
    Number(i64),
    Text(String),
}

impl RawCap {
    fn parse(&self) -> Result<crate::tenancy::limits::ServerCap, String> {
        match self {
            RawCap::Number(n) => crate::tenancy::limits::ServerCap::parse(&n.to_string()),
            RawCap::Text(s) => crate::tenancy::limits::ServerCap::parse(s),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_client_tls")]
    pub client_tls: String,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default = "default_tenant_cap")]
    pub tenant_label_cap: usize,
    #[serde(default = "default_buckets")]
    pub buckets: Vec<f64>,
    #[serde(default)]
    pub slow_statement_threshold: Option<String>,
    /// Keep per-query-shape statistics (SHOW QUERIES).
    #[serde(default)]
    pub query_stats: bool,
    /// Record Prometheus metrics at all (false: nothing is recorded, /metrics is empty).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

impl Default for RawMetrics {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_max_message_size() -> usize {
    64 << 20
}
fn default_log_format() -> String {
    "human".into()
}
fn default_mode() -> String {
    "transaction".into()
}
fn default_size() -> usize {
    20
}
fn default_max_clients() -> usize {
    10_000
}
fn default_checkout_timeout() -> String {
    "5s".into()
}
fn default_idle_timeout() -> String {
    "10m".into()
}
fn default_lifetime() -> String {
    "1h".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}
fn zero_duration() -> String {
    "0".into()
}
fn default_login_retry() -> String {
    "1s".into()
}
fn default_keepidle() -> String {
    "30s".into()
}
fn default_keepintvl() -> String {
    "10s".into()
}
fn default_keepcnt() -> u32 {
    3
}
fn default_user_timeout() -> String {
    "30s".into()
}
fn default_listen_backlog() -> u32 {
    4096
}
fn default_login_timeout() -> String {
    "15s".into()
}
fn default_stats_period() -> String {
    "60s".into()
}
fn default_max_logins() -> usize {
    1000
}
fn default_ready_timeout() -> String {
    "2s".into()
}
fn default_session_state() -> String {
    "reset".into()
}
fn default_max_prepared() -> usize {
    250
}
fn default_client_tls() -> String {
    "allow".into()
}
fn default_tenant_cap() -> usize {
    50
}
/// From 50 µs to 30 s: resolves both 100 µs and 10 s.
pub fn default_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let err = |key: String, message: String| ConfigError {
        file: file.clone(),
        key,
        message,
    };
    let dur = |key: &str, v: &str| {
        humantime::parse_duration(v).map_err(|e| {
            err(
                key.into(),
                format!("{v:?} is not a duration ({e}); use e.g. \"5s\""),
            )
        })
    };
    let addr = |key: &str, v: &str| {
        v.parse()
            .map_err(|e| err(key.into(), format!("{v:?} is not an address:port ({e})")))
    };
    let mode = |key: String, v: &str| match v {
        "transaction" => Ok(PoolMode::Transaction),
        "session" => Ok(PoolMode::Session),
        _ => Err(err(
            key,
            format!("{v:?}: must be \"transaction\" or \"session\""),
        )),
    };

    let p = &raw.pool;
    if p.size == 0 {
        return Err(err("pool.size".into(), "must be at least 1".into()));
    }
    if p.min_size > p.size {
        return Err(err(
            "pool.min_size".into(),
            "must not exceed pool.size".into(),
        ));
    }
    let pool = PoolSettings {
        mode: mode("pool.mode".into(), &p.mode)?,
        size: p.size,
        min_size: p.min_size,
        checkout_timeout: dur("pool.checkout_timeout", &p.checkout_timeout)?,
        idle_timeout: dur("pool.idle_timeout", &p.idle_timeout)?,
        server_lifetime: dur("pool.server_lifetime", &p.server_lifetime)?,
        connect_timeout: dur("pool.connect_timeout", &p.connect_timeout)?,
        query_timeout: dur("pool.query_timeout", &p.query_timeout)?,
        idle_transaction_timeout: dur(
            "pool.idle_transaction_timeout",
            &p.idle_transaction_timeout,
        )?,
        server_login_retry: dur("pool.server_login_retry", &p.server_login_retry)?,
        ready_probe_timeout: match dur("pool.ready_probe_timeout", &p.ready_probe_timeout)? {
            d if d.is_zero() => {
                return Err(err(
                    "pool.ready_probe_timeout".into(),
                    "must be more than 0".into(),
                ))
            }
            d => d,
        },
        fair_sharing: p.fair_sharing,
        stats_period: match dur("stats_period", &raw.stats_period)? {
            d if d.is_zero() => {
                return Err(err("stats_period".into(), "must be more than 0".into()))
            }
            d => d,
        },
        tcp: TcpSettings {
            keepidle: dur("pool.tcp_keepidle", &p.tcp_keepidle)?,
            keepintvl: dur("pool.tcp_keepintvl", &p.tcp_keepintvl)?,
            keepcnt: p.tcp_keepcnt,
            user_timeout: dur("pool.tcp_user_timeout", &p.tcp_user_timeout)?,
        },
        session_state: match p.session_state.as_str() {
            "reset" => SessionStatePolicy::Reset,
            "pin" => SessionStatePolicy::Pin,
            "reject" => SessionStatePolicy::Reject,
            v => {
                return Err(err(
                    "pool.session_state".into(),
                    format!("{v:?}: must be \"reset\", \"pin\" or \"reject\""),
                ))
            }
        },
        max_prepared_statements: p.max_prepared_statements,
    };

    let mut databases = Vec::new();
    let mut names = HashSet::new();
    for (i, d) in raw.databases.iter().enumerate() {
        let key = |k: &str| format!("databases[{i}].{k}");
        if d.name.is_empty() || d.name == "pgward" {
            return Err(err(
                key("name"),
                "must be non-empty and not \"pgward\" (the admin console)".into(),
            ));
        }
        if !names.insert(d.name.clone()) {
            return Err(err(key("name"), format!("duplicate database {:?}", d.name)));
        }
        let mut upstream = Upstream::parse(&d.upstream).map_err(|m| err(key("upstream"), m))?;
        if let Some(r) = &d.baseline_role {
            if r.is_empty() || r.contains('\0') || r.eq_ignore_ascii_case("none") {
                return Err(err(
                    key("baseline_role"),
                    format!("{r:?}: must name a role"),
                ));
            }
            upstream.baseline_role = Some(r.clone());
        }
        if let Some(l) = &d.max_replica_lag {
            upstream.max_replica_lag =
                Some(dur(&key("max_replica_lag"), l)?).filter(|d| !d.is_zero());
        }
        let role_check = match d.role_check.as_deref() {
            None | Some("warn") => RoleCheck::Warn,
            Some("strict") => RoleCheck::Strict,
            Some("off") => RoleCheck::Off,
            Some(v) => {
                return Err(err(
                    key("role_check"),
                    format!("{v:?}: must be \"warn\", \"strict\" or \"off\""),
                ))
            }
        };
        let mut settings = pool.clone();
        if let Some(size) = d.pool_size {
            if size == 0 {
                return Err(err(key("pool_size"), "must be at least 1".into()));
            }
            settings.size = size;
        }
        if let Some(m) = d.min_size {
            settings.min_size = m;
        }
        settings.min_size = settings.min_size.min(settings.size);
        if let Some(m) = &d.mode {
            settings.mode = mode(key("mode"), m)?;
        }
        if let Some(t) = &d.query_timeout {
            settings.query_timeout = dur(&key("query_timeout"), t)?;
        }
        if let Some(t) = &d.idle_transaction_timeout {
            settings.idle_transaction_timeout = dur(&key("idle_transaction_timeout"), t)?;
        }
        let tenant_defaults = TenantDefaults {
            max_server_connections: d
                .tenant_max_server_connections
                .as_ref()
                .map(RawCap::parse)
                .transpose()
                .map_err(|e| err(key("tenant_max_server_connections"), e))?,
            max_client_connections: match d.tenant_max_client_connections {
                Some(0) => {
                    return Err(err(
                        key("tenant_max_client_connections"),
                        "must be at least 1".into(),
                    ))
                }
                n => n,
            },
        };
        databases.push(Arc::new(Database {
            name: d.name.clone(),
            upstream,
            pool: settings,
            tenant_required: d.tenant_required,
            role_check,
            tenant_defaults,
        }));
    }

    let mut users = HashMap::new();
    for (i, u) in raw.users.iter().enumerate() {
        let key = |k: &str| format!("users[{i}].{k}");
        if u.name.is_empty() {
            return Err(err(key("name"), "must be non-empty".into()));
        }
        let secret = match &u.password {
            Some(p) => Some(Secret::parse(p).map_err(|e| err(key("password"), e.to_string()))?),
            None => None,
        };
        let auth = match (u.auth.as_deref(), &secret) {
            (Some("trust"), _) | (None, None) => AuthMethod::Trust,
            (Some(_), None) => {
                return Err(err(key("password"), "required unless auth = \"trust\"".into()))
            }
            (Some("password"), _) => AuthMethod::Password,
            (Some("md5"), Some(Secret::Scram(_))) => {
                return Err(err(
                    key("auth"),
                    "md5 cannot be checked against a SCRAM verifier; give a plaintext or md5 password".into(),
                ))
            }
            (Some("md5"), _) | (None, Some(Secret::Md5 { .. })) => AuthMethod::Md5,
            (Some("scram-sha-256"), Some(Secret::Md5 { .. })) => {
                return Err(err(
                    key("auth"),
                    "scram-sha-256 cannot be checked against an md5 hash; give a plaintext password or a SCRAM verifier".into(),
                ))
            }
            (Some("scram-sha-256"), _) | (None, Some(_)) => AuthMethod::ScramSha256,
            (Some(other), _) => {
                return Err(err(
                    key("auth"),
                    format!("{other:?}: must be \"scram-sha-256\", \"md5\", \"password\" or \"trust\""),
                ))
            }
        };
        if users
            .insert(
                u.name.clone(),
                Arc::new(User {
                    name: u.name.clone(),
                    secret,
                    auth,
                }),
            )
            .is_some()
        {
            return Err(err(key("name"), format!("duplicate user {:?}", u.name)));
        }
    }
    for (i, a) in raw.admin_users.iter().enumerate() {
        if !users.contains_key(a) {
            return Err(err(
                format!("admin_users[{i}]"),
                format!("{a:?} is not in [[users]]"),
            ));
        }
    }

    let mut tenants = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        if t.id.is_empty() || t.id.len() > 63 {
            return Err(err(key("id"), "must be 1 to 63 bytes".into()));
        }
        if !names.contains(&t.database) {
            return Err(err(
                key("database"),
                format!("{:?} is not in [[databases]]", t.database),
            ));
        }
        if names.contains(&t.id) || t.id == "pgward" {
            return Err(err(
                key("id"),
                format!("{:?} collides with a database name", t.id),
            ));
        }
        let mut settings = BTreeMap::new();
        for (k, v) in &t.settings {
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "search_path" | "role" | "session_authorization"
            ) {
                return Err(err(
                    key(&format!("settings.{k}")),
                    "use the tenant's search_path / role keys for this setting".into(),
                ));
            }
            if lk.is_empty() {
                return Err(err(key("settings"), "empty setting name".into()));
            }
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(err(
                        key(&format!("settings.{k}")),
                        "must be a string, number or boolean".into(),
                    ))
                }
            };
            settings.insert(lk, value);
        }
        let limits = crate::tenancy::limits::TenantLimits {
            weight: match t.weight {
                Some(w) => {
                    crate::tenancy::limits::parse_weight(w).map_err(|e| err(key("weight"), e))?
                }
                None => 1.0,
            },
            max_server_connections: t
                .max_server_connections
                .as_ref()
                .map(RawCap::parse)
                .transpose()
                .map_err(|e| err(key("max_server_connections"), e))?,
            max_client_connections: match t.max_client_connections {
                Some(0) => {
                    return Err(err(
                        key("max_client_connections"),
                        "must be at least 1".into(),
                    ))
                }
                n => n,
            },
            reserved_server_connections: t.reserved_server_connections.unwrap_or(0),
            queue_timeout: t
                .queue_timeout
                .as_deref()
                .map(crate::tenancy::limits::parse_queue_timeout)
                .transpose()
                .map_err(|e| err(key("queue_timeout"), e))?,
        };
        let dedicated = match &t.upstream {
            None => {
                if t.pool_size.is_some() {
                    return Err(err(
                        key("pool_size"),
                        "only for a tenant with its own upstream".into(),
                    ));
                }
                None
            }
            Some(u) => Some(
                crate::tenancy::dedicated::Dedicated::parse(u, t.pool_size)
                    .map_err(|(k, e)| err(key(k), e))?,
            ),
        };
        if let Some(list) = &t.users {
            for (j, u) in list.iter().enumerate() {
                if !users.contains_key(u) {
                    return Err(err(
                        key(&format!("users[{j}]")),
                        format!("{u:?} is not in [[users]]"),
                    ));
                }
            }
        }
        if tenants
            .insert(
                t.id.clone(),
                Arc::new(Tenant {
                    id: t.id.clone(),
                    database: t.database.clone(),
                    search_path: t.search_path.clone(),
                    settings,
                    role: t.role.clone(),
                    users: t.users.clone(),
                    limits,
                    dedicated,
                }),
            )
            .is_some()
        {
            return Err(err(key("id"), format!("duplicate tenant {:?}", t.id)));
        }
    }

    let tls = match &raw.tls {
        None => None,
        Some(t) => Some(TlsSettings {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_tls: match t.client_tls.as_str() {
                "disable" => ClientTls::Disable,
                "allow" => ClientTls::Allow,
                "require" => ClientTls::Require,
                v => {
                    return Err(err(
                        "tls.client_tls".into(),
                        format!("{v:?}: must be \"disable\", \"allow\" or \"require\""),
                    ))
                }
            },
            client_ca: t.client_ca.clone(),
        }),
    };

    let m = &raw.metrics;
    if m.buckets.is_empty() || m.buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(err(
            "metrics.buckets".into(),
            "must be a non-empty increasing list".into(),
        ));
    }
    let metrics = MetricsSettings {
        tenant_label_cap: m.tenant_label_cap,
        buckets: m.buckets.clone(),
        slow_statement_threshold: match &m.slow_statement_threshold {
            Some(v) => Some(dur("metrics.slow_statement_threshold", v)?),
            None => None,
        },
        query_stats: m.query_stats,
        enabled: m.enabled,
    };
    let tenant_query = match &raw.tenant_query {
        None => None,
        Some(q) => {
            Upstream::parse(&q.upstream).map_err(|m| err("tenant_query.upstream".into(), m))?;
            Some(TenantQuery {
                upstream: q.upstream.clone(),
                query: q.query.clone(),
                refresh: dur("tenant_query.refresh", &q.refresh)?,
            })
        }
    };
    let auth_query = match &raw.auth_query {
        None => None,
        Some(q) => {
            Upstream::parse(&q.upstream).map_err(|m| err("auth_query.upstream".into(), m))?;
            Some(AuthQuery {
                upstream: q.upstream.clone(),
                query: q.query.clone(),
                cache_ttl: dur("auth_query.cache_ttl", &q.cache_ttl)?,
            })
        }
    };
    let mut access = Vec::new();
    for (i, r) in raw.access.iter().enumerate() {
        access.push(
            super::access::AccessRule::from_raw(r)
                .map_err(|(k, m)| err(format!("access[{i}].{k}"), m))?,
        );
    }
    if !matches!(raw.log_format.as_str(), "human" | "json") {
        return Err(err(
            "log_format".into(),
            "must be \"human\" or \"json\"".into(),
        ));
    }
    if raw.max_message_size < 1024 {
        return Err(err(
            "max_message_size".into(),
            "must be at least 1024 bytes".into(),
        ));
    }

    Ok(Config {
        origins: Vec::new(),
        path: path.to_path_buf(),
        listen: addr("listen", &raw.listen)?,
        http_listen: match &raw.http_listen {
            Some(h) => Some(addr("http_listen", h)?),
            None => None,
        },
        admin_users: raw.admin_users.clone(),
        workers: raw.workers,
        max_client_connections: raw.pool.max_client_connections,
        max_message_size: raw.max_message_size,
        log_format: raw.log_format.clone(),
        listen_backlog: match raw.listen_backlog {
            0 => return Err(err("listen_backlog".into(), "must be at least 1".into())),
            n => n,
        },
        upgrade_socket: match raw.upgrade_socket.as_deref() {
            None => None,
            Some("") => {
                return Err(err(
                    "upgrade_socket".into(),
                    "must be a path (leave the key out to turn takeover off)".into(),
                ))
            }
            Some(p) => Some(PathBuf::from(p)),
        },
        client_login_timeout: match dur("client_login_timeout", &raw.client_login_timeout)? {
            d if d.is_zero() => {
                return Err(err(
                    "client_login_timeout".into(),
                    "must be more than 0".into(),
                ))
            }
            d => d,
        },
        max_pending_logins: raw.max_pending_logins.max(1),

        databases,
        users,
        tenants,
        tls,
        metrics,
        tenant_query,
        access,
        auth_query,
        raw,
    })
}

/// The effective configuration as TOML, with passwords masked and values that came from
/// `${NAME}` references shown as the file wrote them.
pub fn render_effective(config: &super::Config) -> String {
    let mut r = config.raw.clone();
    for u in &mut r.users {
        if u.password.is_some() {
            u.password = Some("********".into());
        }
    }
    let mask = |upstream: &mut String| {
        if let Ok(mut url) = url::Url::parse(upstream) {
            if url.password().is_some() {
                let _ = url.set_password(Some("********"));
                *upstream = url.to_string();
            }
        }
    };
    for d in &mut r.databases {
        mask(&mut d.upstream);
    }
    for t in &mut r.tenants {
        if let Some(u) = &mut t.upstream {
            mask(u);
        }
    }
    if let Some(q) = &mut r.tenant_query {
        mask(&mut q.upstream);
    }
    let mut doc = match toml::Value::try_from(&r) {
        Ok(d) => d,
        Err(e) => return format!("# cannot render: {e}\n"),
    };
    super::env::restore_templates(&mut doc, &config.origins);
    toml::to_string_pretty(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
