//! What the admin console shows of server connections (`SHOW SERVERS`), including the ones a
//! client holds, which the pool cannot look into.
//!
//! Each connection carries an [`ServerInfo`] shared with its pool's [`Registry`]: fixed facts
//! from the connect, and a few atomics written once per checkout (relaxed; readers only
//! display them). The registry holds weak references, so a connection that is dropped
//! anywhere disappears from it without any bookkeeping on the drop path; dead entries are
//! pruned when the registry grows past twice its live size.
//!
//! Times are kept as microseconds since a process-wide anchor ([`since_anchor_us`]), so
//! recording one costs no clock read beyond the `Instant` the caller already has.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Facts about one server connection.
pub struct ServerInfo {
    pub id: u64,
    /// PostgreSQL's backend process id.
    pub pid: i32,
    pub connected: SystemTime,
    /// pgward's end of the connection.
    pub local: Option<SocketAddr>,
    /// The upstream host it reached.
    pub peer: Arc<crate::config::Host>,
    pub tls: bool,
    /// The pool's generation when it was opened: older ones are closed at checkin
    /// (`RECONNECT`).
    pub generation: AtomicU64,
    /// Its server said it is a standby when it was opened (a pool with a
    /// `target_session_attrs` other than `any` asks).
    pub standby: std::sync::atomic::AtomicBool,
    /// Its host stopped being of the kind the pool needs (a demoted primary): it is closed
    /// instead of reused.
    pub retired: std::sync::atomic::AtomicBool,
    /// The client holding it (its id), valid while the connection is checked out.
    pub link: AtomicU64,
    /// When it was last checked out ([`since_anchor_us`]); 0: never.
    pub checked_out_us: AtomicU64,
    /// Prepared statements on it when it was last checked out.
    pub prepared: AtomicU32,
}

impl ServerInfo {
    pub fn new(
        id: u64,
        pid: i32,
        local: Option<SocketAddr>,
        peer: crate::config::Host,
        tls: bool,
    ) -> Arc<ServerInfo> {
        Arc::new(ServerInfo {
            id,
            pid,
            connected: SystemTime::now(),
            local,
            peer: Arc::new(peer),
            tls,
            generation: AtomicU64::new(0),
            retired: Default::default(),
            standby: Default::default(),
            link: AtomicU64::new(0),
            checked_out_us: AtomicU64::new(0),
            prepared: AtomicU32::new(0),
        })
    }

    /// Note a checkout at `now` by the pool (the client is linked by the session).
    #[inline]
    pub fn checked_out(&self, now: Instant, prepared: usize) {
        self.checked_out_us
            .store(since_anchor_us(now), Ordering::Relaxed);
        self.prepared.store(prepared as u32, Ordering::Relaxed);
    }
}

/// The server connections of one pool that are still alive somewhere.
#[derive(Default)]
pub struct Registry(Mutex<Vec<Weak<ServerInfo>>>);

impl Registry {
    pub fn add(&self, info: &Arc<ServerInfo>) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= 16 && v.len() >= 2 * v.iter().filter(|w| w.strong_count() > 0).count() {
            v.retain(|w| w.strong_count() > 0);
        }
        v.push(Arc::downgrade(info));
    }

    /// The live connections, oldest first.
    pub fn live(&self) -> Vec<Arc<ServerInfo>> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.iter().filter_map(Weak::upgrade).collect()
    }
}

fn anchor() -> &'static (Instant, SystemTime) {
    static A: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    A.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// `t` as microseconds since the process-wide anchor (at least 1).
#[inline]
pub fn since_anchor_us(t: Instant) -> u64 {
    (t.saturating_duration_since(anchor().0).as_micros() as u64).max(1)
}

/// The wall-clock time of a value from [`since_anchor_us`]; `None` for 0 (never).
pub fn wall_time(us: u64) -> Option<SystemTime> {
    (us != 0).then(|| anchor().1 + Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> crate::config::Host {
        crate::config::Host {
            name: "db".into(),
            port: 5432,
        }
    }

    #[test]
    fn dropped_connections_leave_the_registry() {
        let r = Registry::default();
        let keep: Vec<_> = (0..3)
            .map(|i| ServerInfo::new(i, 0, None, host(), false))
            .collect();
        for k in &keep {
            r.add(k);
        }
        for i in 10..100 {
            r.add(&ServerInfo::new(i, 0, None, host(), false)); // dropped at once
        }
        let live: Vec<u64> = r.live().iter().map(|i| i.id).collect();
        assert_eq!(live, vec![0, 1, 2]);
        assert!(r.0.lock().unwrap().len() == 3);
    }

    #[test]
    fn anchor_times_round_trip_to_wall_time() {
        let now = Instant::now();
        let wall = wall_time(since_anchor_us(now)).unwrap();
        let diff = match wall.duration_since(SystemTime::now()) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(diff < Duration::from_secs(1));
        assert_eq!(wall_time(0), None);
    }
}
