//! State shared by every task of a running proxy: the configuration snapshot (swapped whole
//! on reload), pools, tenant contexts, cancel keys, the prepared-statement registry and the
//! list of connected clients (for the admin console).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::client::cancel::CancelRegistry;
use crate::config::Config;
use crate::pool::Pool;
use crate::server::prepared::Registry;
use crate::tenancy::TenantContexts;

/// What SHOW CLIENTS shows about one client.
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub tenant: Option<String>,
    pub addr: String,
    pub connected_at: SystemTime,
    /// 0 idle, 1 active (holds a server), 2 waiting for a server.
    pub state: std::sync::atomic::AtomicU8,
    /// While waiting in a pool's queue: when the wait began (µs since the Unix epoch); else 0.
    pub wait_since_us: AtomicU64,
    pub tls: bool,
    pub application_name: String,
    /// pgward's end of the connection (`local_addr` of SHOW CLIENTS).
    pub local: Option<std::net::SocketAddr>,
    /// When its current or last transaction got a server connection (µs since the anchor of
    /// `crate::pool::servers`); 0: never.
    pub request_us: AtomicU64,
    /// Its named prepared statements, as of its last transaction start.
    pub prepared: std::sync::atomic::AtomicU32,
    /// Wakes the session (a stored permit wakes an idle one): for `KILL` / `KILL_CLIENT`
    /// (with `killed` set) it ends; otherwise this process handed its listeners to a
    /// successor and the session moves there at its next idle point.
    pub kill: Notify,
    /// Set by `KILL` / `KILL_CLIENT` before waking the session.
    pub killed: std::sync::atomic::AtomicBool,
    /// Its startup parameters, packed (`client::handover::pack_startup`): a moved client is
    /// admitted again from them.
    pub startup: Box<[u8]>,
}

pub struct Shared {
    pub config: ArcSwap<Config>,
    pub tenants: ArcSwap<TenantContexts>,
    pub pools: DashMap<String, Arc<Pool>>,
    pub cancels: CancelRegistry,
    pub statements: Registry,
    pub clients: DashMap<u64, Arc<ClientInfo>>,
    /// Clients from their startup packet on (`max_client_connections`).
    pub client_count: AtomicUsize,
    /// Clients per tenant (`max_client_connections` of a tenant).
    pub tenant_clients: Arc<crate::tenancy::limits::ClientCounts>,
    /// Connections still logging in (`max_pending_logins`).
    pub pending_logins: AtomicUsize,
    pub next_client: AtomicU64,
    pub started: Instant,
    pub shutting_down: AtomicBool,
    pub shutdown: Notify,
    /// Takeover by a successor process, or of a predecessor (`crate::upgrade`).
    pub upgrade: crate::upgrade::State,
    /// Databases closed to new clients by `DISABLE` (until `ENABLE`).
    pub disabled: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Key for mock SCRAM salts of unknown users (random per process).
    pub mock_key: [u8; 32],
    pub tls: ArcSwap<Option<crate::net::tls::ServerTls>>,
    /// Tenants loaded by `tenant_query` (last good set).
    pub loaded_tenants: ArcSwap<Vec<Arc<crate::config::Tenant>>>,
    /// Wakes the tenant refresher (RELOAD).
    pub tenant_refresh: Notify,
    /// T5: what context-less statements would run as, per database.
    pub postures: crate::tenancy::posture::Postures,
    /// Wakes the posture check (reload, new tenants).
    pub posture_recheck: Notify,
    /// Recent authentication failures per source address: (count, last failure).
    auth_failures: DashMap<std::net::IpAddr, (u32, Instant)>,
    /// auth_query results: user → (fetched at, credentials or none).
    pub auth_cache: DashMap<String, (Instant, Option<Arc<crate::config::User>>)>,
    /// SCRAM verifiers derived from plaintext passwords (PBKDF2 is slow: once per user).
    plain_verifiers: DashMap<String, (String, crate::auth::ScramVerifier)>,
}

impl Shared {
    pub fn new(config: Config) -> Result<Arc<Shared>, String> {
        let tls = match &config.tls {
            Some(t) => Some(crate::net::tls::server_config(t)?),
            None => None,
        };
        let shared = Arc::new(Shared {
            tenants: ArcSwap::from_pointee(TenantContexts::build(&config, &[])),
            loaded_tenants: ArcSwap::from_pointee(Vec::new()),
            auth_failures: DashMap::new(),
            auth_cache: DashMap::new(),
            tenant_refresh: Notify::new(),
            postures: Default::default(),
            posture_recheck: Notify::new(),
            config: ArcSwap::from_pointee(config),
            pools: DashMap::new(),
            cancels: CancelRegistry::default(),
            statements: Registry::default(),
            clients: DashMap::new(),
            client_count: AtomicUsize::new(0),
            tenant_clients: Default::default(),
            pending_logins: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            shutdown: Notify::new(),
            upgrade: Default::default(),
            disabled: Default::default(),
            mock_key: rand::random(),
            tls: ArcSwap::from_pointee(tls),
            plain_verifiers: DashMap::new(),
        });
        shared.sync_pools();
        Ok(shared)
    }

    /// The SCRAM verifier for a user configured with a plaintext password.
    pub fn plain_verifier(&self, user: &str, password: &str) -> crate::auth::ScramVerifier {
        if let Some(e) = self.plain_verifiers.get(user) {
            if e.0 == password {
                return e.1.clone();
            }
        }
        let salt: [u8; 16] = rand::random();
        let v = crate::auth::ScramVerifier::from_password(
            password,
            &salt,
            crate::auth::secret::DEFAULT_ITERATIONS,
        );
        self.plain_verifiers
            .insert(user.to_string(), (password.to_string(), v.clone()));
        v
    }

    /// Record a failed authentication from `ip`; returns how long to wait before answering:
    /// nothing for the first two failures within a minute, then 100 ms doubling up to 3 s.
    pub fn auth_failed(&self, ip: std::net::IpAddr) -> std::time::Duration {
        if self.auth_failures.len() > 100_000 {
            self.auth_failures.clear();
        }
        let mut e = self.auth_failures.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() > std::time::Duration::from_secs(60) {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = Instant::now();
        let n = e.0;
        drop(e);
        if n < 3 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(100u64.saturating_mul(1 << (n - 3).min(5)))
            .min(std::time::Duration::from_secs(3))
    }

    pub fn auth_succeeded(&self, ip: std::net::IpAddr) {
        if !self.auth_failures.is_empty() {
            self.auth_failures.remove(&ip);
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Create pools for new databases, replace pools whose settings changed, drop removed ones.
    pub fn sync_pools(&self) {
        let cfg = self.config();
        for db in &cfg.databases {
            let replace = match self.pools.get(&db.name) {
                Some(p) => {
                    format!("{:?}{:?}", p.db.upstream, p.db.pool)
                        != format!("{:?}{:?}", db.upstream, db.pool)
                        || p.db.tenant_defaults != db.tenant_defaults
                }
                None => true,
            };
            if replace {
                let pool = Pool::new(db.clone());
                crate::pool::maintain::spawn(pool.clone());
                if let Some(old) = self.pools.insert(db.name.clone(), pool) {
                    old.close();
                }
            }
        }
        self.pools.retain(|name, p| {
            // auth_query users' pools are keyed "database\0user".
            let db = name.split('\0').next().unwrap_or(name);
            let keep = cfg.database(db).is_some();
            if !keep {
                p.close();
            }
            keep
        });
        self.tenants_changed();
    }

    /// After the tenant set or the pools changed: close dedicated pools that are no longer
    /// wanted, and give pools their tenants' reserves.
    pub fn tenants_changed(&self) {
        crate::tenancy::dedicated::reconcile(self);
        crate::tenancy::limits::apply_reserves(self);
    }

    /// Apply a new configuration (SIGHUP / RELOAD). Settings that need a restart (listen
    /// addresses, workers) keep their old values until then.
    pub fn reload(&self, new: Config) -> Result<(), String> {
        let tls = match &new.tls {
            Some(t) => Some(crate::net::tls::server_config(t)?),
            None => None,
        };
        self.tls.store(Arc::new(tls));
        self.tenants.store(Arc::new(TenantContexts::build(
            &new,
            &self.loaded_tenants.load(),
        )));
        self.config.store(Arc::new(new));
        self.tenant_refresh.notify_waiters();
        self.posture_recheck.notify_one();
        self.sync_pools();
        Ok(())
    }

    pub fn pool(&self, database: &str) -> Option<Arc<Pool>> {
        self.pools.get(database).map(|p| p.clone())
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }
}
