//! A pool of server connections for one database (one upstream, one server user).
//!
//! Invariants:
//! - At most `size` connections are checked out or being opened: a [`fair::Permit`] is held
//!   for each; waiters are served by fair sharing of connection time between tenants (and
//!   the plain clients as one more class), first-in first-out within one (`fair.rs`). Idle
//!   connections come only from check-ins and the maintenance top-up (which counts them), so
//!   idle + in use stays within `size` too.
//! - A [`Checkout`] is an RAII guard: dropped without [`Checkout::checkin`], its connection is
//!   closed, never reused (unknown state means close).
//! - An idle connection is checked for liveness and age before it is handed out.
//! - No lock is held across an `.await`; the idle list uses a short `std::sync::Mutex`.

pub mod averages;
pub mod fair;
pub mod maintain;
pub mod servers;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::{Database, PoolMode};
use crate::server::params::ParamSet;
use crate::server::{connect, ServerConn, ServerError};
pub use fair::{ClassKey, Share};
use fair::{FairGate, Permit};
pub use stats::PoolStats;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection available in pool {pool} within {waited:?} (pool size {size})")]
    Timeout {
        pool: String,
        waited: Duration,
        size: usize,
    },
    #[error("cannot connect to server for pool {pool}: {source}")]
    Connect {
        pool: String,
        #[source]
        source: ServerError,
    },
}

pub struct Pool {
    pub db: Arc<Database>,
    /// Key in the pool registry (`database`, `database\0user` for auth_query users, or
    /// `database\0tenant\0id` for a dedicated tenant's pool).
    pub key: String,
    /// The tenant whose own database this pool reaches (`crate::tenancy::dedicated`): created
    /// on demand, not probed and not counted for `/ready`.
    pub dedicated_tenant: Option<Arc<str>>,
    idle: Mutex<Vec<ServerConn>>,
    gate: Arc<FairGate>,
    /// The class of the pool's own work on the gate (maintenance, probes).
    own_class: ClassKey,
    pub stats: PoolStats,
    /// `pgward_checkout_wait_seconds` for this pool.
    wait_histogram: metrics::Histogram,
    /// ParameterStatus values of the first successful connection (told to clients at login).
    baseline: Mutex<Option<Arc<ParamSet>>>,
    /// Unix time (ms) of the last successful connect or liveness check, for `/ready`.
    pub last_ok_ms: AtomicU64,
    /// Unix time (ms) of the last failed connect.
    pub last_error_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// No connection attempt before this (Unix ms): `server_login_retry` after a failure.
    retry_after_ms: AtomicU64,
    /// Failed attempts not logged yet, and when the last warning was logged (Unix ms).
    failures_unlogged: AtomicU64,
    failure_logged_ms: AtomicU64,
    /// Transactions completed when the maintenance task last looked (proof of life).
    pub(crate) seen_xacts: AtomicU64,
    /// Startup parameter values (`name\0value`) this pool's server accepted, with the value
    /// as PostgreSQL spells it (`utf8` → `UTF8`): checked at a client's login once, not again
    /// ([`crate::client`]'s startup check). Bounded.
    pub accepted_params: Mutex<HashMap<Box<str>, Box<str>>>,
    paused: AtomicBool,
    resumed: Notify,
    closed: AtomicBool,
    next_id: AtomicU64,
    /// Bumped by `RECONNECT`: connections opened before are closed when next returned.
    generation: AtomicU64,
    /// The upstream host of the newest connection.
    current_host: Mutex<Option<crate::config::Host>>,
    /// Every live server connection of the pool (`SHOW SERVERS`).
    pub servers: servers::Registry,
    /// `SHOW STATS_AVERAGES` window.
    pub averages: Mutex<averages::Window>,
}

pub struct Checkout {
    conn: Option<ServerConn>,
    permit: Permit,
    pub pool: Arc<Pool>,
    pub since: Instant,
    /// How long the checkout waited in the queue.
    pub waited: Duration,
}

impl Pool {
    pub fn new(db: Arc<Database>) -> Arc<Pool> {
        let key = db.name.clone();
        Self::with_key(db, key)
    }

    pub fn with_key(db: Arc<Database>, key: String) -> Arc<Pool> {
        Self::build(db, key, None)
    }

    /// A dedicated tenant's pool.
    pub fn dedicated(db: Arc<Database>, key: String, tenant: &str) -> Arc<Pool> {
        Self::build(db, key, Some(tenant.into()))
    }

    fn build(db: Arc<Database>, key: String, dedicated_tenant: Option<Arc<str>>) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            dedicated_tenant,
            gate: FairGate::new(db.pool.size, db.pool.fair_sharing),
            own_class: ClassKey::from("\0pgward"),
            wait_histogram: crate::metrics::checkout_wait(&db.name),
            db,
            idle: Mutex::new(Vec::new()),
            stats: PoolStats::default(),
            baseline: Mutex::new(None),
            last_ok_ms: AtomicU64::new(0),
            last_error_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            retry_after_ms: AtomicU64::new(0),
            failures_unlogged: AtomicU64::new(0),
            failure_logged_ms: AtomicU64::new(0),
            seen_xacts: AtomicU64::new(0),
            accepted_params: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            current_host: Mutex::new(None),
            servers: Default::default(),
            averages: Mutex::new(averages::Window::new(Instant::now())),
        })
    }

    pub fn name(&self) -> &str {
        &self.db.name
    }

    pub fn mode(&self) -> PoolMode {
        self.db.pool.mode
    }

    fn label(&self) -> String {
        format!("{}/{}", self.db.name, self.db.upstream.user)
    }

    /// Wait (bounded by `timeout`, else `checkout_timeout`; fair between classes, FIFO within
    /// `class`) for a connection: an idle one that is still alive, or a new one. While it
    /// waits in the queue, `since` (if given) holds when the wait began (µs since the Unix
    /// epoch), else 0: `maxwait` of SHOW POOLS.
    pub async fn checkout(
        self: &Arc<Self>,
        class: &ClassKey,
        share: Share,
        since: Option<&AtomicU64>,
        timeout: Option<Duration>,
    ) -> Result<Checkout, CheckoutError> {
        // Fast path: a permit is free (none are, while anybody waits: released permits go to
        // waiters first, so this never overtakes the queue) and nothing is paused.
        let now = Instant::now();
        let fast = match self.paused.load(Ordering::Acquire) {
            false => self.gate.try_acquire_at(class, share, now),
            true => None,
        };
        let (permit, waited, now) = match fast {
            Some(p) => (p, Duration::ZERO, now),
            None => {
                let _waiting = since.map(Waiting::start);
                let (p, waited) = self.wait_permit(class, share, timeout).await?;
                (p, waited, Instant::now())
            }
        };
        self.with_permit(permit, waited, now).await
    }

    /// A connection only if one can be had without queueing (a permit is free and the pool
    /// is not paused), else `None`: for best-effort work that must not make a client wait.
    pub async fn checkout_now(
        self: &Arc<Self>,
        class: &ClassKey,
        share: Share,
    ) -> Option<Result<Checkout, CheckoutError>> {
        if self.paused.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        let permit = self.gate.try_acquire_at(class, share, now)?;
        Some(self.with_permit(permit, Duration::ZERO, now).await)
    }

    /// A permit for the pool's own work (maintenance, probes), only if one is free.
    fn own_permit(&self) -> Option<Permit> {
        self.gate.try_acquire(&self.own_class, Share::EQUAL)
    }

    /// Set aside connections for tenants (`reserved_server_connections`).
    pub fn set_reserves(&self, reserves: HashMap<ClassKey, usize>) {
        self.gate.set_reserves(reserves);
    }

    /// Clients waiting for a connection now.
    pub fn waiting(&self) -> usize {
        self.stats.waiting.load(Ordering::Relaxed)
    }

    /// Waiting clients and server connections held, by class (tenant id, `""` for plain
    /// clients).
    pub fn shares(&self) -> Vec<(ClassKey, usize, usize)> {
        self.gate.snapshot()
    }

    /// The rest of a checkout once a permit is held: an idle connection, or a new one.
    /// `now`: the caller's reading of the clock, just taken.
    async fn with_permit(
        self: &Arc<Self>,
        permit: Permit,
        waited: Duration,
        mut now: Instant,
    ) -> Result<Checkout, CheckoutError> {
        self.record_wait(waited);
        self.wait_histogram.record(waited.as_secs_f64());
        let conn = match self.take_idle(now) {
            Some(c) => c,
            None => {
                // Boxed: connecting (TLS, SCRAM) is rare and its state large.
                let c = Box::pin(self.open()).await?;
                now = Instant::now(); // the transaction starts after the connect
                c
            }
        };
        conn.info.checked_out(now, conn.statements.len());
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.checkouts_total.fetch_add(1, Ordering::Relaxed);
        Ok(Checkout {
            conn: Some(conn),
            permit,
            pool: self.clone(),
            since: now,
            waited,
        })
    }

    /// The slow path of [`Pool::checkout`]: queue for a permit (and for RESUME).
    async fn wait_permit(
        &self,
        class: &ClassKey,
        share: Share,
        timeout: Option<Duration>,
    ) -> Result<(Permit, Duration), CheckoutError> {
        let start = Instant::now();
        let limit = timeout.unwrap_or(self.db.pool.checkout_timeout);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(limit, async {
            while self.paused.load(Ordering::Acquire) {
                let notified = self.resumed.notified();
                if !self.paused.load(Ordering::Acquire) {
                    break;
                }
                notified.await;
            }
            self.gate.acquire(class, share).await
        })
        .await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(p) => Ok((p, start.elapsed())),
            Err(_) => Err(CheckoutError::Timeout {
                pool: self.label(),
                waited: limit,
                size: self.db.pool.size,
            }),
        }
    }

    fn record_wait(&self, waited: Duration) {
        let us = waited.as_micros() as u64;
        if us > 0 {
            self.stats.wait_us_total.fetch_add(us, Ordering::Relaxed);
        }
    }

    fn take_idle(&self, now: Instant) -> Option<ServerConn> {
        loop {
            let mut c = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.pop()?
            };
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            if c.stream.is_broken_while_idle() || !self.reusable(&c, now) {
                self.stats.closed_total.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return Some(c);
        }
    }

    /// Open a new connection (the caller holds a permit for it). Within `server_login_retry`
    /// of a failed attempt it fails at once, without trying: clients are told at once and
    /// PostgreSQL is not hammered while it is down.
    pub async fn open(&self) -> Result<ServerConn, CheckoutError> {
        let now = now_ms();
        let retry_after = self.retry_after_ms.load(Ordering::Relaxed);
        if now < retry_after {
            let last = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(CheckoutError::Connect {
                pool: self.label(),
                source: ServerError::Backoff(last, Duration::from_millis(retry_after - now)),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.stats.connecting.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let s = &self.db.pool;
        let up = &self.db.upstream;
        let per_host = up.host_connect_timeout.unwrap_or(s.connect_timeout);
        let all = per_host.saturating_mul(up.hosts.len().max(1) as u32);
        let r = tokio::time::timeout(all, connect(up, id, &s.tcp, per_host))
            .await
            .unwrap_or(Err(ServerError::Timeout));
        self.stats.connecting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(c) => {
                c.info
                    .generation
                    .store(self.generation.load(Ordering::Relaxed), Ordering::Relaxed);
                self.servers.add(&c.info);
                self.note_host(&c.info.peer);
                crate::metrics::server_connect(self.name(), start.elapsed());
                self.stats.opened_total.fetch_add(1, Ordering::Relaxed);
                self.mark_ok();
                self.retry_after_ms.store(0, Ordering::Relaxed);
                let mut b = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
                if b.is_none() {
                    *b = Some(Arc::new(c.params.baseline.clone()));
                }
                Ok(c)
            }
            Err(e) => {
                if matches!(e, ServerError::Timeout) {
                    crate::metrics::timeout("connect");
                }
                self.connect_failed(&e);
                Err(CheckoutError::Connect {
                    pool: self.label(),
                    source: e,
                })
            }
        }
    }

    /// Record a failed attempt: back off, and warn at most every 10 s (with the count).
    fn connect_failed(&self, e: &ServerError) {
        let now = now_ms();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        self.last_error_ms.store(now, Ordering::Relaxed);
        let retry = self.db.pool.server_login_retry.as_millis() as u64;
        self.retry_after_ms.store(now + retry, Ordering::Relaxed);
        let unlogged = self.failures_unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let logged = self.failure_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(logged) >= 10_000 {
            self.failure_logged_ms.store(now, Ordering::Relaxed);
            self.failures_unlogged.store(0, Ordering::Relaxed);
            tracing::warn!(
                pool = %self.label(),
                error = %e,
                failed_attempts = unlogged,
                retry_in = ?self.db.pool.server_login_retry,
                "server connection failed"
            );
        } else {
            tracing::debug!(pool = %self.label(), error = %e, "server connection failed");
        }
    }

    /// Prove the server answers: `SELECT 1` on an idle connection (or a new one), within
    /// `ready_probe_timeout`, never taking a connection a client is waiting for. A probe that
    /// fails or times out closes its connection and makes `/ready` fail.
    pub async fn probe(self: &Arc<Self>) {
        let Some(permit) = self.own_permit() else {
            return; // every connection is in use: completed transactions are the proof
        };
        let mut conn = match self.take_idle(Instant::now()) {
            Some(c) => c,
            None => match self.open().await {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        let limit = self.db.pool.ready_probe_timeout;
        let r =
            tokio::time::timeout(limit, crate::server::query::run(&mut conn, b"SELECT 1")).await;
        match r {
            Ok(Ok(None)) => {
                self.mark_ok();
                self.put_idle(conn, Instant::now());
            }
            _ => {
                let why = match r {
                    Err(_) => format!("readiness probe: no answer to SELECT 1 within {limit:?}"),
                    _ => "readiness probe: SELECT 1 failed".to_string(),
                };
                tracing::warn!(pool = %self.label(), "{why}; closing that server connection");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                self.last_error_ms.store(now_ms(), Ordering::Relaxed);
                self.stats.closed_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(permit);
    }

    /// `max_replica_lag`: check each standby host the pool has an idle connection to (one
    /// query on one of them, bounded by `ready_probe_timeout`) and leave the hosts whose replay
    /// is too far behind; new connections then go to a standby that keeps up, else the
    /// primary. Called by the maintenance task.
    pub async fn check_replica_lag(self: &Arc<Self>) {
        let Some(max) = self.db.upstream.max_replica_lag else {
            return;
        };
        let mut hosts: Vec<Arc<crate::config::Host>> = Vec::new();
        self.with_idle(|idle| {
            for c in idle.iter() {
                if c.info.standby.load(Ordering::Relaxed) && !hosts.contains(&c.info.peer) {
                    hosts.push(c.info.peer.clone());
                }
            }
        });
        for host in hosts {
            let Some(permit) = self.own_permit() else {
                return; // every connection is in use
            };
            let taken = self.with_idle(|idle| {
                let i = idle.iter().position(|c| c.info.peer == host)?;
                Some(idle.swap_remove(i))
            });
            let Some(mut conn) = taken else { continue };
            self.stats.idle.fetch_sub(1, Ordering::Relaxed);
            let limit = self.db.pool.ready_probe_timeout;
            let lag = tokio::time::timeout(limit, crate::server::connect::replay_lag(&mut conn))
                .await
                .ok()
                .flatten();
            match lag {
                Some(l) if l <= max => self.put_idle(conn, Instant::now()),
                lag => {
                    self.stats.closed_total.fetch_add(1, Ordering::Relaxed);
                    let lag = lag.map_or("unknown".into(), |l| format!("{:.1}s", l.as_secs_f64()));
                    tracing::warn!(pool = %self.label(), %host, %lag, max = ?max, "standby too far behind (max_replica_lag): closing its connections");
                    self.leave_host_quietly(&host);
                }
            }
            drop(permit);
        }
    }

    pub fn mark_ok(&self) {
        self.last_ok_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The ParameterStatus set clients are told at login; connects once if none is known.
    pub async fn baseline(self: &Arc<Self>) -> Result<Arc<ParamSet>, CheckoutError> {
        if let Some(b) = self
            .baseline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(b);
        }
        let co = self
            .checkout(&self.own_class, Share::EQUAL, None, None)
            .await?;
        co.checkin();
        Ok(self
            .baseline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default())
    }

    pub(crate) fn put_idle(&self, mut conn: ServerConn, now: Instant) {
        self.check_demoted(&conn);
        if self.closed.load(Ordering::Acquire) || !self.reusable(&conn, now) {
            self.stats.closed_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        conn.last_used = now;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        self.stats.idle.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Close idle connections and refuse new checkouts (shutdown, or a replaced pool).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_idle(|_| true);
    }

    /// Close the idle connections `which` selects (dropped after the lock is released).
    fn close_idle(&self, which: impl Fn(&ServerConn) -> bool) {
        let closed: Vec<ServerConn> = self.with_idle(|idle| {
            let (gone, kept) = std::mem::take(idle).into_iter().partition(|c| which(c));
            *idle = kept;
            gone
        });
        self.stats.idle.fetch_sub(closed.len(), Ordering::Relaxed);
        self.stats
            .closed_total
            .fetch_add(closed.len() as u64, Ordering::Relaxed);
    }

    /// Neither past `server_lifetime`, nor opened before the last `RECONNECT`, nor on a host
    /// the pool left.
    fn reusable(&self, c: &ServerConn, now: Instant) -> bool {
        now.saturating_duration_since(c.created) <= self.db.pool.server_lifetime
            && c.info.generation.load(Ordering::Relaxed) >= self.generation.load(Ordering::Relaxed)
            && !c.info.retired.load(Ordering::Relaxed)
    }

    /// A pool that needs a primary (`target_session_attrs` read-write or primary) sees a
    /// connection say its server is a standby now, or read-only (PostgreSQL 14+ reports both):
    /// leave its host (`SHOW SERVERS` shows which). Idle connections to it close now, the
    /// others when returned; new connections search the hosts again.
    fn check_demoted(&self, c: &ServerConn) {
        if !self.db.upstream.target_session_attrs.needs_writes() {
            return;
        }
        let p = &c.params.current;
        let demoted = p.get("in_hot_standby") == Some("on")
            || p.get("default_transaction_read_only") == Some("on");
        if demoted && !c.info.retired.load(Ordering::Relaxed) {
            self.leave_host(&c.info.peer);
        }
    }

    /// Close the connections to `host`: idle ones now, the others when returned.
    pub fn leave_host(&self, host: &crate::config::Host) {
        tracing::warn!(pool = %self.label(), %host, "the server is no longer a primary (in_hot_standby or default_transaction_read_only is on): closing its connections; new ones go to the host that is");
        self.leave_host_quietly(host);
    }

    fn leave_host_quietly(&self, host: &crate::config::Host) {
        for i in self.servers.live() {
            if *i.peer == *host {
                i.retired.store(true, Ordering::Relaxed);
            }
        }
        self.close_idle(|c| *c.info.peer == *host);
    }

    /// The host of the newest connection, for `SHOW DATABASES` and `/metrics`.
    pub fn current_host(&self) -> Option<crate::config::Host> {
        self.current_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new connection reached `host`: a different one than the last is a switch.
    fn note_host(&self, host: &crate::config::Host) {
        let mut cur = self.current_host.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref() == Some(host) {
            return;
        }
        if let Some(old) = cur.replace(host.clone()) {
            tracing::warn!(pool = %self.label(), from = %old, to = %host, "upstream switch: new server connections go to another host");
            crate::metrics::upstream_switch(self.name());
            crate::metrics::upstream_host(self.name(), &old.to_string(), false);
        }
        crate::metrics::upstream_host(self.name(), &host.to_string(), true);
    }

    /// `RECONNECT`: close the idle connections now and the others when they are returned.
    pub fn reconnect(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.close_idle(|_| true);
    }

    /// Server connections that are to close (`WAIT_CLOSE`): opened before the last
    /// `RECONNECT`, or all of them once the pool is closed.
    pub fn closing(&self) -> usize {
        self.servers
            .live()
            .iter()
            .filter(|i| self.marked_for_close(i))
            .count()
    }

    /// To be closed when next returned (or now, if idle).
    pub fn marked_for_close(&self, i: &servers::ServerInfo) -> bool {
        self.is_closed()
            || i.generation.load(Ordering::Relaxed) < self.generation.load(Ordering::Relaxed)
    }

    /// Close the `SHOW STATS_AVERAGES` window if `stats_period` has passed.
    pub fn roll_averages(&self, now: Instant) {
        let current = averages::Totals::of(&self.stats);
        self.averages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .roll(now, current, self.db.pool.stats_period);
    }

    /// Server connections in existence (idle + in use + opening).
    pub fn size_now(&self) -> usize {
        self.stats.idle.load(Ordering::Relaxed)
            + self.stats.active.load(Ordering::Relaxed)
            + self.stats.connecting.load(Ordering::Relaxed)
    }

    /// Closed: replaced by a reload, or shutting down.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// (max, total) prepared statements over idle connections.
    pub fn prepared_counts(&self) -> (usize, usize) {
        self.with_idle(|idle| {
            idle.iter()
                .map(|c| c.statements.len())
                .fold((0, 0), |(m, t), n| (m.max(n), t + n))
        })
    }

    /// Snapshot of idle connections for SHOW SERVERS: (id, last used, prepared statements).
    pub fn idle_snapshot(&self) -> Vec<(u64, Instant, usize)> {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| (c.id, c.last_used, c.statements.len()))
            .collect()
    }

    pub(crate) fn with_idle<R>(&self, f: impl FnOnce(&mut Vec<ServerConn>) -> R) -> R {
        f(&mut self.idle.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Checkout {
    #[inline]
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("checkout holds a connection")
    }
    /// Return a clean connection (ReadyForQuery 'I', nothing outstanding) to the pool.
    pub fn checkin(self) {
        self.checkin_at(Instant::now());
    }

    /// [`Checkout::checkin`] with the caller's reading of the clock.
    pub fn checkin_at(mut self, now: Instant) {
        self.permit.end_at(now);
        if let Some(c) = self.conn.take() {
            self.pool.put_idle(c, now);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        if self.conn.take().is_some() {
            self.pool.stats.closed_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A client's place in a pool's queue, for `maxwait`: the start time is cleared however the
/// wait ends (a connection, an error, or the waiting future dropped by a cancel).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn start(since: &'a AtomicU64) -> Self {
        since.store(now_us().max(1), Ordering::Relaxed);
        Waiting(since)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}
