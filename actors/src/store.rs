//! The store: the durable record of every job (its state changes and history), the pipelines'
//! output records and the little node state that must survive a restart.
//!
//! Today that is the sled [`journal`], one embedded database under the node's data dir. A
//! PostgreSQL store for cluster mode will sit beside it here, behind one interface; until then
//! callers use the journal directly.

pub mod journal;
