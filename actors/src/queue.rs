//! A pipeline's run queue: strict priority (high, normal, low; FIFO within a level) with one
//! anti-starvation rule: every `max_wait` a job spends waiting promotes it one level, so a low
//! job that waited `2 · max_wait` competes as high. Among equal effective levels the job that
//! has waited longest goes first, which is what guarantees that a steady stream of high jobs
//! cannot starve older low ones forever.
//!
//! Pure data: `now` is passed in. Only the three lane fronts are compared on each pop, so a pop
//! is O(1) no matter how many jobs wait.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::job::{JobId, Priority};

/// Spare capacity a lane may keep before [`RunQueue::shrink`] gives it back.
pub const SHRINK_SLACK: usize = 1024;

/// One waiting job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// The job.
    pub id: JobId,
    /// When it started waiting (its place in its lane and its age for promotion).
    pub since: Instant,
}

/// Three FIFO lanes with aging.
#[derive(Debug)]
pub struct RunQueue {
    lanes: [VecDeque<Queued>; 3],
    max_wait: Duration,
}

impl RunQueue {
    /// An empty queue that promotes a job one level per `max_wait` waited.
    pub fn new(max_wait: Duration) -> Self {
        Self {
            lanes: Default::default(),
            max_wait,
        }
    }

    /// Adds a job at the back of its lane.
    pub fn push(&mut self, id: JobId, priority: Priority, since: Instant) {
        self.lanes[priority.index()].push_back(Queued { id, since });
    }

    /// Puts a job back at the front of its lane (its worker crashed: it has waited already).
    pub fn push_front(&mut self, id: JobId, priority: Priority, since: Instant) {
        self.lanes[priority.index()].push_front(Queued { id, since });
    }

    /// Takes the next job to run at `now`, with the lane it came from.
    pub fn pop(&mut self, now: Instant) -> Option<(Queued, Priority)> {
        let mut best: Option<(usize, usize, Instant)> = None; // (effective level, lane, since)
        for (lane, q) in self.lanes.iter().enumerate() {
            let Some(front) = q.front() else { continue };
            let level = self.effective_level(lane, front.since, now);
            let better = match best {
                None => true,
                Some((bl, _, bs)) => level < bl || (level == bl && front.since < bs),
            };
            if better {
                best = Some((level, lane, front.since));
            }
        }
        let (_, lane, _) = best?;
        self.lanes[lane]
            .pop_front()
            .map(|q| (q, Priority::ALL[lane]))
    }

    /// Gives memory back after a backlog drained: a `VecDeque` keeps its capacity, so a million
    /// queued jobs would otherwise hold their slots for the life of the node.
    pub fn shrink(&mut self) {
        for q in &mut self.lanes {
            if q.capacity() > 4 * q.len() + SHRINK_SLACK {
                q.shrink_to(2 * q.len());
            }
        }
    }

    /// Removes a job wherever it waits; true if it was there.
    pub fn remove(&mut self, id: JobId) -> bool {
        for q in &mut self.lanes {
            if let Some(pos) = q.iter().position(|e| e.id == id) {
                q.remove(pos);
                return true;
            }
        }
        false
    }

    /// How many jobs would run before this one if nothing else arrived (0 = next), at `now`.
    pub fn position(&self, id: JobId, now: Instant) -> Option<usize> {
        let (lane, idx) = self
            .lanes
            .iter()
            .enumerate()
            .find_map(|(l, q)| q.iter().position(|e| e.id == id).map(|i| (l, i)))?;
        let me = self.lanes[lane][idx];
        let my_level = self.effective_level(lane, me.since, now);
        let ahead_in_other_lanes: usize = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(l, _)| *l != lane)
            .map(|(l, q)| {
                q.iter()
                    .filter(|e| {
                        let lv = self.effective_level(l, e.since, now);
                        lv < my_level || (lv == my_level && e.since < me.since)
                    })
                    .count()
            })
            .sum();
        Some(idx + ahead_in_other_lanes)
    }

    /// Jobs waiting in one lane.
    pub fn depth(&self, priority: Priority) -> usize {
        self.lanes[priority.index()].len()
    }

    /// Jobs waiting in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    fn effective_level(&self, lane: usize, since: Instant, now: Instant) -> usize {
        if self.max_wait.is_zero() {
            return lane;
        }
        let waited = now.saturating_duration_since(since);
        let promotions = (waited.as_nanos() / self.max_wait.as_nanos()) as usize;
        lane.saturating_sub(promotions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<JobId> {
        (0..n).map(|_| JobId::new()).collect()
    }

    /// Ensures that high runs before normal before low, FIFO within a level.
    #[tokio::test(start_paused = true)]
    async fn strict_priority_fifo_within_level() {
        let mut q = RunQueue::new(Duration::from_secs(60));
        let id = ids(5);
        let now = Instant::now();
        q.push(id[0], Priority::Low, now);
        q.push(id[1], Priority::Normal, now);
        q.push(id[2], Priority::High, now);
        q.push(id[3], Priority::Low, now);
        q.push(id[4], Priority::High, now);
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now).map(|(e, _)| e.id)).collect();
        assert_eq!(order, vec![id[2], id[4], id[1], id[0], id[3]]);
        assert!(q.is_empty());
    }

    /// Ensures that a low job that waited longer than `max_wait` twice over beats newer high
    /// jobs, so a steady stream of high jobs cannot starve it.
    #[tokio::test(start_paused = true)]
    async fn aging_prevents_starvation() {
        let mut q = RunQueue::new(Duration::from_secs(10));
        let low = JobId::new();
        q.push(low, Priority::Low, Instant::now());
        for step in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            q.push(JobId::new(), Priority::High, Instant::now());
            let (next, lane) = q.pop(Instant::now()).unwrap();
            if next.id == low {
                assert_eq!(lane, Priority::Low);
                assert!(step >= 19, "promoted too early, at step {step}");
                return;
            }
        }
        panic!("the low job starved");
    }

    /// Ensures that one promotion puts a low job ahead of fresh normal jobs, not of high ones.
    #[tokio::test(start_paused = true)]
    async fn one_promotion_is_one_level() {
        let mut q = RunQueue::new(Duration::from_secs(10));
        let low = JobId::new();
        q.push(low, Priority::Low, Instant::now());
        tokio::time::advance(Duration::from_secs(11)).await;
        let (normal, high) = (JobId::new(), JobId::new());
        q.push(normal, Priority::Normal, Instant::now());
        q.push(high, Priority::High, Instant::now());
        let now = Instant::now();
        assert_eq!(q.position(high, now), Some(0));
        assert_eq!(q.position(low, now), Some(1));
        assert_eq!(q.position(normal, now), Some(2));
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now).map(|(e, _)| e.id)).collect();
        assert_eq!(order, vec![high, low, normal]);
    }

    /// Ensures that removal and depth counting work per lane.
    #[tokio::test(start_paused = true)]
    async fn remove_and_depth() {
        let mut q = RunQueue::new(Duration::from_secs(10));
        let id = ids(3);
        let now = Instant::now();
        q.push(id[0], Priority::Normal, now);
        q.push(id[1], Priority::Normal, now);
        q.push_front(id[2], Priority::Normal, now);
        assert_eq!(q.depth(Priority::Normal), 3);
        assert!(q.remove(id[0]));
        assert!(!q.remove(id[0]));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(now).unwrap().0.id, id[2]);
    }
}
