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
//!   *virtual time* (or, with fair sharing off, to the client that queued first) (connection time held, divided by the class's weight); a class that
//!   starts waiting after being idle starts at the current virtual clock, so idleness banks
//!   no credit. A light class therefore waits at most about one transaction of the others,
//!   and a heavy one gets every slot nobody else wants.
//! - One short `std::sync::Mutex`, never held across an `.await` or while sending a permit's
//!   release back into it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

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

#[derive(Default)]
struct State {
    free: usize,
    waiting: usize,
    /// Virtual time of the last grant; classes that start waiting start here.
    clock: f64,
    classes: HashMap<ClassKey, Class>,
    /// Slots set aside per class (usually empty).
    reserves: HashMap<ClassKey, usize>,
    /// Serve waiters in arrival order across classes (fair sharing off).
    fifo: bool,
    /// Arrival order of waiters.
    next_ticket: u64,
}

#[derive(Default)]
struct Class {
    /// Seconds of server-connection time held, divided by the weight.
    vtime: f64,
    held: usize,
    /// The latest `Share::max` a client of the class asked with.
    max: usize,
    /// Waiters with their arrival tickets.
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
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
}

impl FairGate {
    /// A gate of `size` slots; `fair`: by connection time between classes, else first come
    /// first served across classes (caps and reserves still apply).
    pub fn new(size: usize, fair: bool) -> Arc<FairGate> {
        Arc::new(FairGate {
            state: Mutex::new(State {
                free: size,
                fifo: !fair,
                ..State::default()
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
        if !self.lock().take_now(class, share) {
            return None;
        }
        Some(self.permit(class, share.weight))
    }

    /// Wait for a permit (cancel-safe: dropping the future gives a granted slot back).
    pub async fn acquire(self: &Arc<Self>, class: &ClassKey, share: Share) -> Permit {
        let rx = {
            let mut s = self.lock();
            if s.take_now(class, share) {
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
        if let Some(rx) = rx {
            let mut w = Waiter {
                gate: self,
                class,
                rx: Some(rx),
            };
            if let Some(rx) = w.rx.as_mut() {
                // Never Err: an entry leaves the queue unsent only once its receiver is
                // closed, and this one is open until here.
                let _ = rx.await;
            }
            w.rx = None; // received: the permit below owns the slot
        }
        self.permit(class, share.weight)
    }

    fn permit(self: &Arc<Self>, class: &ClassKey, weight: f64) -> Permit {
        Permit {
            gate: self.clone(),
            class: class.clone(),
            weight,
            since: Instant::now(),
        }
    }

    /// A slot of `class` is given back after `held` seconds (weighted): hand it to the
    /// fairest waiter, or keep it free.
    fn release(&self, class: &ClassKey, charge: f64) {
        let mut s = self.lock();
        if let Some(c) = s.classes.get_mut(class) {
            c.held = c.held.saturating_sub(1);
            c.vtime += charge;
        }
        s.free += 1;
        s.hand_over();
        s.forget_idle(class);
    }

    /// Waiting clients and permits held, by class (for SHOW and metrics).
    pub fn snapshot(&self) -> Vec<(ClassKey, usize, usize)> {
        let s = self.lock();
        s.classes
            .iter()
            .map(|(k, c)| (k.clone(), c.queue.len(), c.held))
            .collect()
    }
}

impl State {
    /// The class, entering at the virtual clock if it was idle.
    fn activate(&mut self, class: &ClassKey, share: Share) -> &mut Class {
        let clock = self.clock;
        let c = self.classes.entry(class.clone()).or_default();
        if c.held == 0 && c.queue.is_empty() {
            c.vtime = c.vtime.max(clock);
        }
        c.max = share.max;
        c
    }

    /// Take a slot without queueing, if that overtakes nobody.
    fn take_now(&mut self, class: &ClassKey, share: Share) -> bool {
        if self.free == 0 || self.anyone_servable_waits() || !self.slot_for(class) {
            return false;
        }
        let c = self.activate(class, share);
        if !c.may_take() {
            return false;
        }
        c.held += 1;
        self.free -= 1;
        true
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
        while self.free > 0 && self.waiting > 0 {
            let candidates = self
                .classes
                .iter()
                .filter(|(k, c)| self.servable(k, c))
                .map(|(k, c)| (k, c.vtime, c.queue.front().map_or(u64::MAX, |w| w.0)));
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
            if tx.send(()).is_ok() {
                self.free -= 1;
                c.held += 1;
                self.clock = self.clock.max(vtime);
            }
            // else: that waiter gave up; try the next one
        }
    }

    /// Drop the entry of a class that holds and waits for nothing and has no debt left.
    fn forget_idle(&mut self, class: &ClassKey) {
        let clock = self.clock;
        if let Some(c) = self.classes.get(class) {
            if c.held == 0 && c.queue.is_empty() && c.vtime <= clock {
                self.classes.remove(class);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let charge = self.since.elapsed().as_secs_f64() / self.weight;
        self.gate.release(&self.class, charge);
    }
}

/// A client in the queue; if it gives up after its slot was granted, the slot goes back.
struct Waiter<'a> {
    gate: &'a Arc<FairGate>,
    class: &'a ClassKey,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if rx.try_recv().is_ok() {
            // Granted just as it gave up: the slot was counted as held by this class.
            self.gate.release(self.class, 0.0);
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
        s.forget_idle(self.class);
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
}
