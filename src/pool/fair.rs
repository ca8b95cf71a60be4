//! The gate in front of a pool's server connections: at most `size` permits, handed to
//! waiting clients by weighted fair sharing of server-connection *time* between classes
//! (a tenant, or the plain clients), first-in first-out within a class.
//!
//! Invariants:
//! - `free + permits out == size`: a [`Permit`] returns its slot when dropped; a slot handed
//!   to a waiter that gave up (timeout, cancel) comes back through [`Waiter`]'s drop.
//! - A class never holds more than its `Share::max` permits; its clients wait beyond that
//!   even when slots are free (which other classes may take).
//! - A class with a reserve of `r` slots ([`FairGate::set_reserves`]) can always get up to `r`
//!   of them: another class takes a slot only while more are free than the other classes'
//!   reserves they do not use.
//! - A permit is taken without queueing only when no client that could be served waits: the
//!   fast path never overtakes the queue.
//! - When a slot frees up and clients wait, it goes to the waiting class with the least
//!   *virtual time* (connection time held, divided by the class's weight), or, with fair
//!   sharing off, to the client that queued first. A class that becomes active after being
//!   idle starts no lower than [`CREDIT`] below the current virtual clock, so idleness banks
//!   at most that much: a class that only now asks goes before the classes that have been
//!   holding connections, but a class that held a lot keeps its debt. A light class therefore
//!   waits at most about one transaction of the others, and a heavy one gets every slot
//!   nobody else wants.
//! - Anticipation: a slot released by a class that would be served next if it waited, while
//!   other classes wait, is held for that class for [`GRACE`] (a client's round trip to send
//!   its next statement) before it goes to them. Without it a light tenant whose client is
//!   between two statements loses the slot to a heavy tenant for a whole transaction of
//!   theirs. `free + permits out + parked == size`; a parked slot is handed on once its
//!   grace is over (at the next event on the gate, or by the gate's one timer task).
//! - One short `std::sync::Mutex`, never held across an `.await` or while sending a permit's
//!   release back into it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a released slot is held for the class that released it, when that class would
/// be served next (see the module documentation).
pub const GRACE: Duration = Duration::from_millis(1);

/// The most a class that was idle starts below the virtual clock (seconds of connection
/// time, weighted).
pub const CREDIT: f64 = 0.02;

/// Class lookups happen twice per checkout: a fast hash for short keys.
type Hasher = foldhash::fast::RandomState;

/// Idle classes are kept (no lookup, insert and removal per checkout) until there are this
/// many entries; then they are pruned, and the bound doubles past what is left.
const PRUNE_AT: usize = 256;

/// A class of clients sharing the gate fairly: a tenant id, or `""` for plain clients.
pub type ClassKey = Arc<str>;

/// What a class may have of the gate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Relative claim on connection time (> 0).
    pub weight: f64,
    /// Permits the class may hold at once.
    pub max: usize,
}

impl Share {
    pub const EQUAL: Share = Share {
        weight: 1.0,
        max: usize::MAX,
    };
}

pub struct FairGate {
    state: Mutex<State>,
}

struct State {
    /// Origin of the clock readings summed in [`Class::since_sum`].
    epoch: Instant,
    free: usize,
    waiting: usize,
    /// Virtual time of the last grant; classes that start waiting start here.
    clock: f64,
    classes: HashMap<ClassKey, Class, Hasher>,
    /// Prune idle classes from `classes` when it grows past this.
    prune_at: usize,
    /// Slots set aside per class (usually empty).
    reserves: HashMap<ClassKey, usize>,
    /// Serve waiters in arrival order across classes (fair sharing off).
    fifo: bool,
    /// Arrival order of waiters.
    next_ticket: u64,
    /// Slots held for a class (oldest first); the time a slot stays parked counts as that
    /// class's connection time.
    parked: VecDeque<Parked>,
    /// A timer task will hand on parked slots whose grace is over.
    timer_armed: bool,
}

struct Parked {
    class: ClassKey,
    since: Instant,
    weight: f64,
}

impl Parked {
    fn deadline(&self) -> Instant {
        self.since + GRACE
    }
}

#[derive(Default)]
struct Class {
    /// Seconds of server-connection time of the permits given back, divided by the weight.
    vtime: f64,
    held: usize,
    /// Sum over the permits held of when each began (seconds since the gate's epoch): with
    /// `held`, the time they have been held so far ([`State::eff`]).
    since_sum: f64,
    weight: f64,
    /// The latest `Share::max` a client of the class asked with.
    max: usize,
    /// Waiters with their arrival tickets; a grant sends when it began.
    queue: VecDeque<(u64, oneshot::Sender<Instant>)>,
}

impl Class {
    fn may_take(&self) -> bool {
        self.held < self.max
    }
}

/// The right to hold one server connection; returns its slot when dropped.
pub struct Permit {
    gate: Arc<FairGate>,
    class: ClassKey,
    weight: f64,
    since: Instant,
    /// When the holder gave it back, if it said ([`Permit::end_at`]); else read on drop.
    ended: Option<Instant>,
}

impl Permit {
    /// The caller's reading of the clock when it gave the slot back (saves a clock read).
    pub fn end_at(&mut self, now: Instant) {
        self.ended = Some(now);
    }
}

impl FairGate {
    /// A gate of `size` slots; `fair`: by connection time between classes, else first come
    /// first served across classes (caps and reserves still apply).
    pub fn new(size: usize, fair: bool) -> Arc<FairGate> {
        Arc::new(FairGate {
            state: Mutex::new(State {
                epoch: Instant::now(),
                free: size,
                waiting: 0,
                clock: 0.0,
                classes: HashMap::default(),
                prune_at: PRUNE_AT,
                reserves: HashMap::new(),
                fifo: !fair,
                next_ticket: 0,
                parked: VecDeque::new(),
                timer_armed: false,
            }),
        })
    }

    /// Set aside slots for classes (replacing the previous reserves).
    pub fn set_reserves(&self, reserves: HashMap<ClassKey, usize>) {
        let mut s = self.lock();
        s.reserves = reserves;
        s.hand_over();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit if one is free, the class is under its share and no client that could be
    /// served waits.
    pub fn try_acquire(self: &Arc<Self>, class: &ClassKey, share: Share) -> Option<Permit> {
        self.try_acquire_at(class, share, Instant::now())
    }

    /// [`FairGate::try_acquire`] with the caller's reading of the clock.
    pub fn try_acquire_at(
        self: &Arc<Self>,
        class: &ClassKey,
        share: Share,
        now: Instant,
    ) -> Option<Permit> {
        if !self.lock().take_now(class, share, now) {
            return None;
        }
        Some(self.permit(class, share.weight, now))
    }

    /// Wait for a permit (cancel-safe: dropping the future gives a granted slot back).
    pub async fn acquire(self: &Arc<Self>, class: &ClassKey, share: Share) -> Permit {
        let now = Instant::now();
        let rx = {
            let mut s = self.lock();
            if s.take_now(class, share, now) {
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting += 1;
                s.next_ticket += 1;
                let ticket = s.next_ticket;
                s.activate(class, share).queue.push_back((ticket, tx));
                Some(rx)
            }
        };
        let mut since = now;
        if let Some(rx) = rx {
            let mut w = Waiter {
                gate: self,
                class,
                weight: share.weight,
                rx: Some(rx),
            };
            if let Some(rx) = w.rx.as_mut() {
                // Never Err: an entry leaves the queue unsent only once its receiver is
                // closed, and this one is open until here.
                since = rx.await.unwrap_or_else(|_| Instant::now());
            }
            w.rx = None; // received: the permit below owns the slot
        }
        self.permit(class, share.weight, since)
    }

    fn permit(self: &Arc<Self>, class: &ClassKey, weight: f64, since: Instant) -> Permit {
        Permit {
            gate: self.clone(),
            class: class.clone(),
            weight,
            since,
            ended: None,
        }
    }

    /// A slot of `class` (of `weight`), held from `since` to `ended`, is given back: park it
    /// for the class, hand it to the fairest waiter, or keep it free.
    fn release(self: &Arc<Self>, class: &ClassKey, since: Instant, ended: Instant, weight: f64) {
        let mut s = self.lock();
        let epoch = s.epoch;
        if let Some(c) = s.classes.get_mut(class) {
            c.held = c.held.saturating_sub(1);
            c.since_sum = match c.held {
                0 => 0.0, // no drift left behind
                _ => c.since_sum - since.saturating_duration_since(epoch).as_secs_f64(),
            };
            c.vtime += ended.saturating_duration_since(since).as_secs_f64() / weight;
        }
        if !s.parked.is_empty() {
            s.expire(Instant::now());
        }
        // (Uncontended, nobody waits: no clock read, no parking.)
        if s.should_park(class) && tokio::runtime::Handle::try_current().is_ok() {
            s.parked.push_back(Parked {
                class: class.clone(),
                since: Instant::now(),
                weight,
            });
            if !s.timer_armed {
                s.timer_armed = true;
                let gate = self.clone();
                tokio::spawn(async move { gate.expiry_timer().await });
            }
        } else {
            s.free += 1;
            s.hand_over();
        }
        s.forget_idle();
    }

    /// Hand on parked slots as their grace ends, until none is left.
    async fn expiry_timer(self: Arc<Self>) {
        loop {
            let next = {
                let mut s = self.lock();
                s.expire(Instant::now());
                match s.parked.front() {
                    Some(p) => p.deadline(),
                    None => {
                        s.timer_armed = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Waiting clients and permits held, by class (for SHOW and metrics).
    pub fn snapshot(&self) -> Vec<(ClassKey, usize, usize)> {
        let s = self.lock();
        s.classes
            .iter()
            .filter(|(_, c)| c.held > 0 || !c.queue.is_empty())
            .map(|(k, c)| (k.clone(), c.queue.len(), c.held))
            .collect()
    }
}

impl State {
    /// The class, entering at most [`CREDIT`] below the virtual clock if it was idle.
    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// A class's virtual time counting its permits held so far (at `now`, in seconds since
    /// the epoch): a class is not favoured for the connections it is holding right now.
    fn eff(c: &Class, now: f64) -> f64 {
        c.vtime + (c.held as f64 * now - c.since_sum).max(0.0) / c.weight
    }

    /// Count a permit of the class as held from `now`.
    fn hold(c: &mut Class, now: f64) {
        c.held += 1;
        c.since_sum += now;
    }

    fn activate(&mut self, class: &ClassKey, share: Share) -> &mut Class {
        let clock = self.clock;
        if !self.classes.contains_key(class) {
            self.classes.insert(class.clone(), Class::default());
        }
        let c = self.classes.get_mut(class).expect("just inserted");
        if c.held == 0 && c.queue.is_empty() {
            c.vtime = c.vtime.max(clock - CREDIT);
        }
        c.max = share.max;
        c.weight = share.weight;
        c
    }

    /// Take a slot without queueing, if that overtakes nobody: one parked for the class, else
    /// a free one.
    fn take_now(&mut self, class: &ClassKey, share: Share, now: Instant) -> bool {
        let now_s = self.secs(now);
        if !self.parked.is_empty() {
            self.expire(now);
            if let Some(i) = self.parked.iter().position(|p| &p.class == class) {
                if self.activate(class, share).may_take() {
                    let p = self.parked.remove(i).expect("just found");
                    let c = self.activate(class, share);
                    Self::hold(c, now_s);
                    c.vtime += now.saturating_duration_since(p.since).as_secs_f64() / p.weight;
                    return true;
                }
            }
        }
        if self.free == 0 || self.anyone_servable_waits() || !self.slot_for(class) {
            return false;
        }
        let c = self.activate(class, share);
        if !c.may_take() {
            return false;
        }
        Self::hold(c, now_s);
        self.free -= 1;
        true
    }

    /// Keep a slot `class` just released for it: others wait, it has no waiter itself, and it
    /// would be served before them.
    fn should_park(&self, class: &ClassKey) -> bool {
        if self.fifo || self.waiting == 0 {
            return false;
        }
        let Some(c) = self.classes.get(class) else {
            return false;
        };
        if !c.queue.is_empty() || !c.may_take() {
            return false;
        }
        let now = self.secs(Instant::now());
        let mine = Self::eff(c, now).max(self.clock - CREDIT);
        self.classes
            .iter()
            .filter(|(k, o)| *k != class && !o.queue.is_empty() && o.may_take())
            .all(|(_, o)| mine < Self::eff(o, now))
    }

    /// Parked slots whose grace is over become free (and go to waiters).
    fn expire(&mut self, now: Instant) {
        let mut freed = false;
        while self.parked.front().is_some_and(|p| p.deadline() <= now) {
            let p = self.parked.pop_front().expect("just seen");
            if let Some(c) = self.classes.get_mut(&p.class) {
                c.vtime += GRACE.as_secs_f64() / p.weight;
            }
            self.free += 1;
            freed = true;
        }
        if freed {
            self.hand_over();
        }
    }

    /// A free slot is left for `class` after the other classes' unused reserves.
    fn slot_for(&self, class: &ClassKey) -> bool {
        if self.reserves.is_empty() {
            return self.free > 0;
        }
        let unused: usize = self
            .reserves
            .iter()
            .filter(|(k, _)| *k != class)
            .map(|(k, r)| r.saturating_sub(self.classes.get(k).map_or(0, |c| c.held)))
            .sum();
        self.free > unused
    }

    fn servable(&self, key: &ClassKey, c: &Class) -> bool {
        !c.queue.is_empty() && c.may_take() && self.slot_for(key)
    }

    fn anyone_servable_waits(&self) -> bool {
        self.waiting > 0 && self.classes.iter().any(|(k, c)| self.servable(k, c))
    }

    /// Give free slots to waiters: the fairest class first (or the first to queue).
    fn hand_over(&mut self) {
        if self.free == 0 || self.waiting == 0 {
            return;
        }
        let now = Instant::now();
        let now_s = self.secs(now);
        while self.free > 0 && self.waiting > 0 {
            let candidates = self
                .classes
                .iter()
                .filter(|(k, c)| self.servable(k, c))
                .map(|(k, c)| {
                    let ticket = c.queue.front().map_or(u64::MAX, |w| w.0);
                    (k, Self::eff(c, now_s), ticket)
                });
            let next = match self.fifo {
                true => candidates.min_by_key(|c| c.2),
                false => candidates.min_by(|a, b| a.1.total_cmp(&b.1)),
            };
            let Some((key, vtime)) = next.map(|(k, vtime, _)| (k.clone(), vtime)) else {
                return; // every waiting class is at its maximum or kept off reserves
            };
            let c = self.classes.get_mut(&key).expect("just found");
            let Some((_, tx)) = c.queue.pop_front() else {
                continue;
            };
            self.waiting -= 1;
            if tx.send(now).is_ok() {
                self.free -= 1;
                Self::hold(c, now_s);
                self.clock = self.clock.max(vtime);
            }
            // else: that waiter gave up; try the next one
        }
    }

    /// Drop the entries of classes that hold and wait for nothing and have no debt left, once
    /// there are many (amortised: the bound doubles past what is kept).
    fn forget_idle(&mut self) {
        if self.classes.len() <= self.prune_at {
            return;
        }
        let clock = self.clock;
        self.classes
            .retain(|_, c| !(c.held == 0 && c.queue.is_empty() && c.vtime <= clock));
        self.prune_at = (self.classes.len() * 2).max(PRUNE_AT);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let ended = self.ended.unwrap_or_else(Instant::now);
        self.gate
            .release(&self.class, self.since, ended, self.weight);
    }
}

/// A client in the queue; if it gives up after its slot was granted, the slot goes back.
struct Waiter<'a> {
    gate: &'a Arc<FairGate>,
    class: &'a ClassKey,
    weight: f64,
    rx: Option<oneshot::Receiver<Instant>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(since) = rx.try_recv() {
            // Granted just as it gave up: the slot was counted as held by this class.
            self.gate.release(self.class, since, since, self.weight);
            return;
        }
        // Not granted: take its entry (and any other abandoned one) out of the queue.
        let mut s = self.gate.lock();
        let State {
            classes, waiting, ..
        } = &mut *s;
        if let Some(c) = classes.get_mut(self.class) {
            let before = c.queue.len();
            c.queue.retain(|(_, tx)| !tx.is_closed());
            *waiting -= before - c.queue.len();
        }
        s.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    fn key(s: &str) -> ClassKey {
        ClassKey::from(s)
    }

    #[test]
    fn the_fast_path_takes_free_slots_and_never_overtakes_waiters() {
        let g = FairGate::new(2, true);
        let a = g.try_acquire(&key("a"), Share::EQUAL).expect("free");
        let _b = g.try_acquire(&key("b"), Share::EQUAL).expect("free");
        assert!(g.try_acquire(&key("a"), Share::EQUAL).is_none());
        let c = key("c");
        let mut waiter = Box::pin(g.acquire(&c, Share::EQUAL));
        assert!((&mut waiter).now_or_never().is_none(), "queued");
        drop(a); // the slot goes to the waiter, not to the fast path
        assert!(g.try_acquire(&key("a"), Share::EQUAL).is_none());
        let _c = (&mut waiter).now_or_never().expect("granted");
    }

    #[test]
    fn a_slot_granted_to_a_client_that_gave_up_comes_back() {
        let g = FairGate::new(1, true);
        let held = g.try_acquire(&key("a"), Share::EQUAL).unwrap();
        let b = key("b");
        let mut gave_up = Box::pin(g.acquire(&b, Share::EQUAL));
        assert!((&mut gave_up).now_or_never().is_none());
        drop(held); // granted to `gave_up` …
        drop(gave_up); // … which is dropped before it looked
        assert!(
            g.try_acquire(&key("a"), Share::EQUAL).is_some(),
            "slot leaked"
        );
        assert!(g.snapshot().iter().all(|(_, w, h)| *w == 0 && *h == 0));
    }

    #[tokio::test]
    async fn a_waiter_that_times_out_leaves_the_queue() {
        let g = FairGate::new(1, true);
        let held = g.try_acquire(&key("a"), Share::EQUAL).unwrap();
        let b = key("b");
        let r = tokio::time::timeout(Duration::from_millis(10), g.acquire(&b, Share::EQUAL)).await;
        assert!(r.is_err());
        assert!(g.snapshot().iter().all(|(_, w, _)| *w == 0), "still queued");
        drop(held);
        assert!(
            g.try_acquire(&key("b"), Share::EQUAL).is_some(),
            "fast path blocked"
        );
    }

    /// The heavy class held the only slot for a while and queued first; the light class
    /// queued last and is served first, then the heavy one in its own FIFO order.
    #[tokio::test]
    async fn the_class_with_the_least_connection_time_goes_first() {
        let g = FairGate::new(1, true);
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = g.try_acquire(&key("heavy"), Share::EQUAL).unwrap();
        let mut tasks = Vec::new();
        for name in ["heavy-1", "heavy-2", "light-1"] {
            let (g, order) = (g.clone(), order.clone());
            let class = key(name.split('-').next().unwrap());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(&class, Share::EQUAL).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await; // queue in this order
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held); // heavy has ~35 ms of connection time; light none
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["light-1", "heavy-1", "heavy-2"]);
    }

    /// Weights divide the time charged: after the same time held, a class of weight 4 is
    /// served before a class of weight 1 that queued first.
    #[test]
    fn weight_divides_the_time_charged() {
        let g = FairGate::new(1, true);
        let (a, b) = (key("a"), key("b"));
        let heavy_share = Share {
            weight: 4.0,
            ..Share::EQUAL
        };
        let p = g.try_acquire(&a, heavy_share).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(p);
        let p = g.try_acquire(&b, Share::EQUAL).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut wait_b = Box::pin(g.acquire(&b, Share::EQUAL));
        assert!((&mut wait_b).now_or_never().is_none());
        let mut wait_a = Box::pin(g.acquire(&a, heavy_share));
        assert!((&mut wait_a).now_or_never().is_none());
        drop(p);
        let got_a = (&mut wait_a).now_or_never();
        assert!(got_a.is_some(), "a (20 ms / 4) first");
        assert!((&mut wait_b).now_or_never().is_none(), "b after a's turn");
        drop(got_a);
        assert!((&mut wait_b).now_or_never().is_some());
    }

    #[test]
    fn a_class_at_its_maximum_waits_while_others_take_free_slots() {
        let g = FairGate::new(3, true);
        let (a, b) = (key("a"), key("b"));
        let one = Share {
            max: 1,
            ..Share::EQUAL
        };
        let pa = g.try_acquire(&a, one).unwrap();
        assert!(g.try_acquire(&a, one).is_none(), "over its maximum");
        let mut wait_a = Box::pin(g.acquire(&a, one));
        assert!((&mut wait_a).now_or_never().is_none());
        // a waits, but cannot be served: b is not held back by it.
        let _pb = g.try_acquire(&b, Share::EQUAL).expect("a free slot for b");
        drop(pa);
        assert!(
            (&mut wait_a).now_or_never().is_some(),
            "a's turn after its release"
        );
    }

    #[test]
    fn a_reserve_is_kept_for_its_class() {
        let g = FairGate::new(3, true);
        let (a, b, t) = (key("a"), key("b"), key("t"));
        g.set_reserves(HashMap::from([(t.clone(), 1)]));
        let _a1 = g.try_acquire(&a, Share::EQUAL).unwrap();
        let _b1 = g.try_acquire(&b, Share::EQUAL).unwrap();
        assert!(
            g.try_acquire(&a, Share::EQUAL).is_none(),
            "the last slot is t's"
        );
        let mut wait_a = Box::pin(g.acquire(&a, Share::EQUAL));
        assert!((&mut wait_a).now_or_never().is_none());
        let t1 = g.try_acquire(&t, Share::EQUAL).expect("t's reserve");
        drop(_b1); // t holds its reserve: the freed slot is anyone's
        let a2 = (&mut wait_a).now_or_never().expect("a served");
        drop(t1);
        assert!(g.try_acquire(&b, Share::EQUAL).is_none(), "t's again");
        drop(a2);
        assert!(g.try_acquire(&b, Share::EQUAL).is_some());
    }

    #[test]
    fn without_fair_sharing_the_first_to_queue_goes_first() {
        let g = FairGate::new(1, false);
        let (heavy, light) = (key("heavy"), key("light"));
        let p = g.try_acquire(&heavy, Share::EQUAL).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let mut h2 = Box::pin(g.acquire(&heavy, Share::EQUAL));
        assert!((&mut h2).now_or_never().is_none());
        let mut l1 = Box::pin(g.acquire(&light, Share::EQUAL));
        assert!((&mut l1).now_or_never().is_none());
        drop(p);
        assert!((&mut l1).now_or_never().is_none(), "light queued second");
        assert!((&mut h2).now_or_never().is_some());
    }

    /// A light class between two statements keeps its slot for [`GRACE`] while a heavy one
    /// waits; if it does not come back, the heavy one gets it.
    #[tokio::test]
    async fn a_released_slot_waits_briefly_for_the_class_that_deserves_it() {
        let g = FairGate::new(1, true);
        let (heavy, light) = (key("heavy"), key("light"));
        let p = g.try_acquire(&heavy, Share::EQUAL).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut h = Box::pin(g.acquire(&heavy, Share::EQUAL));
        assert!((&mut h).now_or_never().is_none());
        drop(p); // heavy has waiters: no parking, its waiter gets the slot
        let ph = (&mut h).now_or_never().expect("heavy's waiter");
        let mut l = Box::pin(g.acquire(&light, Share::EQUAL));
        assert!((&mut l).now_or_never().is_none());
        drop(ph);
        let pl = (&mut l)
            .now_or_never()
            .expect("light first: no connection time yet");
        let mut h = Box::pin(g.acquire(&heavy, Share::EQUAL));
        assert!((&mut h).now_or_never().is_none());
        drop(pl); // light would go first: the slot is held for it
        assert!((&mut h).now_or_never().is_none(), "parked for light");
        let pl = g
            .try_acquire(&light, Share::EQUAL)
            .expect("light takes its parked slot");
        drop(pl);
        // Light does not come back: heavy gets the slot once the grace has passed (awaited
        // with a generous bound, not a fixed sleep: the timer may run late on a busy machine).
        tokio::time::timeout(Duration::from_secs(5), &mut h)
            .await
            .expect("heavy after the grace");
        assert!(g.lock().parked.is_empty() && !g.lock().timer_armed);
    }
}
