//! Admin connection slots: at most `[admin] max_connections` connections hold one. When all are
//! taken, the connection idle the longest (no request being received, executed or answered) is
//! told to close, with an error line, and its slot goes to the newcomer; only when every
//! connection has a request in flight does the newcomer get `overloaded`. So idle connections
//! (a forgotten `nc`, a pool that keeps sockets open) can never lock `ping` out for a whole
//! `idle_timeout`, and a connection in use is never cut mid-request.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The node's slots.
pub struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<Vec<Weak<Slot>>>,
}

/// One connection's slot.
pub struct Slot {
    state: Mutex<State>,
    evict: Notify,
}

struct State {
    /// A request is being received, executed or answered.
    busy: bool,
    /// Told to close; its permit went to a newer connection.
    evicted: bool,
    /// When it last became idle (or connected).
    idle_since: Instant,
    /// Freed when the slot is dropped (the connection ended) or handed over on eviction.
    permit: Option<OwnedSemaphorePermit>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections cannot panic half-way; a poisoned lock still holds sound data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slots {
    /// `max` slots.
    pub fn new(max: usize) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            open: Mutex::new(Vec::new()),
        }
    }

    /// A slot for a new connection: a free one, else the longest-idle connection's (that
    /// connection is told to close); `None` when every connection has a request in flight.
    pub fn claim(&self) -> Option<Arc<Slot>> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.evict_longest_idle()?,
        };
        let slot = Arc::new(Slot {
            state: Mutex::new(State {
                busy: false,
                evicted: false,
                idle_since: Instant::now(),
                permit: Some(permit),
            }),
            evict: Notify::new(),
        });
        let mut open = lock(&self.open);
        open.retain(|s| s.strong_count() > 0);
        open.push(Arc::downgrade(&slot));
        Some(slot)
    }

    /// Takes the permit of the connection idle the longest and tells it to close.
    fn evict_longest_idle(&self) -> Option<OwnedSemaphorePermit> {
        let open = lock(&self.open);
        let victim = open
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|slot| {
                let st = lock(&slot.state);
                let idle = !st.busy && !st.evicted && st.permit.is_some();
                let since = st.idle_since;
                drop(st);
                idle.then_some((since, slot))
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, slot)| slot)?;
        let mut st = lock(&victim.state);
        // It may have started a request since it was looked at: then it keeps its slot.
        if st.busy || st.evicted {
            return None;
        }
        st.evicted = true;
        let permit = st.permit.take();
        drop(st);
        victim.evict.notify_one();
        permit
    }
}

impl Slot {
    /// Marks a request in flight (again, for a pipelined one); `false` when the connection was
    /// evicted and must close.
    pub fn begin(&self) -> bool {
        let mut st = lock(&self.state);
        st.busy = !st.evicted;
        st.busy
    }

    /// Marks the connection idle again (its answer is queued).
    pub fn end(&self) {
        let mut st = lock(&self.state);
        st.busy = false;
        st.idle_since = Instant::now();
    }

    /// Resolves once the connection has been evicted.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a full set of slots hands the longest-idle one over (telling it), never a
    /// busy one, and answers `None` once every connection is busy.
    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_slot_is_handed_over() {
        let slots = Slots::new(2);
        let first = slots.claim().expect("a free slot");
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
        let second = slots.claim().expect("a free slot");
        let third = slots.claim().expect("the first one's slot");
        assert!(!first.begin(), "the first connection was evicted");
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, first.evicted())
                .await
                .is_ok()
        );
        assert!(second.begin() && third.begin());
        assert!(slots.claim().is_none(), "every connection is busy");
        second.end();
        assert!(slots.claim().is_some(), "the idle one makes room");
        assert!(!second.begin());
    }
}
