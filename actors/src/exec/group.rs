//! The process group of one exec attempt. The task's process is spawned as the leader of a new
//! group (`process_group(0)`), so whatever it forks stays in that group unless it leaves on
//! purpose (`setsid`), and one `kill(-pgid, sig)` reaches all of them.
//!
//! [`ProcessGroup`] is a guard: dropping it sends SIGKILL to the whole group. The worker aborts
//! an attempt's task at its hard time limit, after a cancel's grace and when the node stops;
//! aborting drops the attempt's future, this guard with it, and so no process the task started
//! outlives its job. Sending to a group that is already gone is not an error (`ESRCH`).

use rustix::process::{kill_process_group, Pid, Signal};

/// Signals sent to an attempt's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Asks them to stop (soft time limit, cancel): they may clean up and exit.
    Term,
    /// Stops them at once (hard limit, cancel after its grace, node shutdown, end of the attempt).
    Kill,
}

/// The group of one attempt; SIGKILLs it when dropped.
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: Option<Pid>,
}

impl ProcessGroup {
    /// The group led by process `pid` (the spawned task, whose pgid is its pid).
    pub fn led_by(pid: Option<u32>) -> ProcessGroup {
        ProcessGroup {
            pgid: pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(Pid::from_raw),
        }
    }

    /// Sends `sig` to every process of the group. Returns false when none was left.
    pub fn signal(&self, sig: Sig) -> bool {
        let Some(pgid) = self.pgid else {
            return false;
        };
        let sig = match sig {
            Sig::Term => Signal::TERM,
            Sig::Kill => Signal::KILL,
        };
        kill_process_group(pgid, sig).is_ok()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Also after a normal exit: a grandchild left running in the background must not
        // outlive its job. While any member lives the kernel keeps the pgid reserved, so this
        // cannot reach a stranger's group.
        self.signal(Sig::Kill);
    }
}
