//! The bounded utterance queue between the front end and the model workers, with the
//! drop-oldest overload policy: [`UtteranceQueue::push`] never blocks and never grows the queue
//! beyond its limit; when full, the oldest waiting utterance is handed back to be reported.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Utterance;

struct Inner {
    items: VecDeque<Utterance>,
    closed: bool,
}

/// A bounded FIFO of utterances (multi-producer, multi-consumer).
pub struct UtteranceQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
    limit: usize,
}

impl UtteranceQueue {
    /// A queue of at most `limit` (>= 1) waiting utterances.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(limit.min(64) + 1),
                closed: false,
            }),
            ready: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Utterances waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `u`; returns the utterances dropped to make room (the oldest first), or `u` itself
    /// when the queue is closed.
    pub fn push(&self, u: Utterance) -> Vec<Utterance> {
        let mut g = self.lock();
        if g.closed {
            return vec![u];
        }
        let mut dropped = Vec::new();
        while g.items.len() >= self.limit {
            if let Some(old) = g.items.pop_front() {
                dropped.push(old);
            }
        }
        g.items.push_back(u);
        drop(g);
        self.ready.notify_one();
        dropped
    }

    /// Waits up to `timeout` for the next utterance. `Err(())` once the queue is closed and
    /// empty.
    #[allow(clippy::result_unit_err)]
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Utterance>, ()> {
        let mut g = self.lock();
        if let Some(u) = g.items.pop_front() {
            return Ok(Some(u));
        }
        if g.closed {
            return Err(());
        }
        let (mut g, _) = self
            .ready
            .wait_timeout(g, timeout)
            .unwrap_or_else(|e| e.into_inner());
        match g.items.pop_front() {
            Some(u) => Ok(Some(u)),
            None if g.closed => Err(()),
            None => Ok(None),
        }
    }

    /// No more pushes; workers finish what is queued, then see the end.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Removes and returns everything waiting (shutdown without draining).
    pub fn clear(&self) -> Vec<Utterance> {
        self.lock().items.drain(..).collect()
    }
}
