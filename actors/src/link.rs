//! [`Link`]: a shared, replaceable reference to the current incarnation of an actor. Actors that
//! talk to a supervised sibling (workers → dispatcher, admin → dispatcher and root) go through a
//! link, so a restarted sibling is found at once without fixed global names (ractor's registry
//! is process-wide, and several nodes share a process in tests).

use std::sync::{Arc, RwLock};

use std::sync::Mutex;

use ractor::{ActorCell, ActorId, ActorRef};

/// See the module doc.
pub struct Link<M: Send + 'static>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M: Send + 'static> Clone for Link<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: Send + 'static> Default for Link<M> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<M: Send + 'static> Link<M> {
    /// The current incarnation, if one is running.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Points the link at a new incarnation.
    pub fn set(&self, r: ActorRef<M>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    /// Clears the link if it still points at `id` (a successor may already have taken it).
    pub fn clear_if(&self, id: ActorId) {
        let mut g = self.0.write().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().map(|r| r.get_id()) == Some(id) {
            *g = None;
        }
    }

    /// Sends without waiting. A message to an actor that is down is dropped: its successor
    /// rebuilds what it needs (the dispatcher from the journal, workers by announcing themselves).
    pub fn cast(&self, msg: M) {
        if let Some(a) = self.get() {
            let _ = a.cast(msg);
        }
    }
}

/// What a child's recipe keeps to follow its incarnations: the [`Link`] others send through,
/// pointed at each new incarnation when it is up and cleared when it is down (only if it still
/// points at that one). Shared by the limiter, breaker, alerts and worker recipes.
pub struct Incarnation<M: Send + 'static> {
    link: Link<M>,
    current: Mutex<Option<ActorId>>,
}

impl<M: Send + 'static> Default for Incarnation<M> {
    fn default() -> Self {
        Self {
            link: Link::default(),
            current: Mutex::new(None),
        }
    }
}

impl<M: Send + 'static> Incarnation<M> {
    /// The link to the current incarnation.
    pub fn link(&self) -> Link<M> {
        self.link.clone()
    }

    /// A new incarnation is up (the recipe's `on_up`).
    pub fn up(&self, cell: &ActorCell) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cell.get_id());
        self.link.set(cell.clone().into());
    }

    /// The incarnation is gone (the recipe's `on_down`); returns which one, if one was up.
    pub fn down(&self) -> Option<ActorId> {
        let gone = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(id) = gone {
            self.link.clear_if(id);
        }
        gone
    }
}
