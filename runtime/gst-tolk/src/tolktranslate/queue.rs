//! The job queue: the hand-off from the sink pad's streaming thread to the src pad's task.
//!
//! Finished utterances and serialized events (stream-start, caps, segment, tags, EOS) travel
//! through the same queue, so they stay in order with the audio (which is why the element keeps
//! its own queue rather than the runtime's utterance-only `UtteranceQueue`). The queue holds at
//! most `queue-size` utterances; at a full queue the streaming thread either drops the oldest
//! waiting utterance or waits for room (the overload policy, decided by the caller).
//!
//! **Lock order.** The element has three locks: `Settings`, `State` (both in `imp.rs`) and the
//! queue's own mutex here, with its condition variable. The queue's mutex is a leaf: while it is
//! held no other lock is taken, and it is held only for O(1) work or for the condition-variable
//! wait itself. `Settings` and `State` are never held while taking the queue's mutex, so neither
//! is ever held while waiting on it: the streaming thread releases `State` before it enqueues (and
//! may block there), the src task pops a job before it takes anything from `State`. `Settings`
//! and `State` are never held together either (a snapshot of the settings is taken first).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use gstreamer as gst;

use super::state::Utterance;

/// One unit of work for the src task.
pub enum Job {
    Utterance(Utterance),
    Event(gst::Event),
    Eos,
}

#[derive(Default)]
struct Jobs {
    jobs: VecDeque<Job>,
    /// Set while flushing or stopped: the task pauses, waits end.
    flushing: bool,
    /// The last downstream flow error, returned upstream by the chain function.
    flow: Option<gst::FlowError>,
    /// Output timeline to restart (after a flush), applied with the next job.
    restart_timeline: bool,
}

impl Jobs {
    fn waiting_utterances(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j, Job::Utterance(_)))
            .count()
    }
}

/// The bounded job queue, its condition variable (a job arrived, room was made, flushing
/// changed) and a lock-free copy of the flushing flag for the decoder's per-token checks.
#[derive(Default)]
pub struct JobQueue {
    jobs: Mutex<Jobs>,
    cond: Condvar,
    flushing: AtomicBool,
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Jobs>) -> MutexGuard<'a, Jobs> {
        self.cond.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (drops every job and wakes both sides) or ends flushing (clears the last flow
    /// error).
    pub fn set_flushing(&self, flushing: bool) {
        let mut q = self.lock();
        q.flushing = flushing;
        self.flushing.store(flushing, Ordering::SeqCst);
        if flushing {
            q.jobs.clear();
        } else {
            q.flow = None;
        }
        self.cond.notify_all();
    }

    /// Whether the queue is flushing, without taking its lock.
    pub fn flushing(&self) -> &AtomicBool {
        &self.flushing
    }

    /// The last downstream flow error, if any.
    pub fn flow(&self) -> Option<gst::FlowError> {
        self.lock().flow
    }

    /// The output timeline restarts with the next job (after a flush or an activation).
    pub fn restart_timeline(&self) {
        self.lock().restart_timeline = true;
    }

    /// Queues a serialized event (dropped while flushing).
    pub fn push_event(&self, event: gst::Event) {
        let mut q = self.lock();
        if q.flushing {
            return;
        }
        q.jobs.push_back(Job::Event(event));
        self.cond.notify_all();
    }

    /// Queues the end of the stream.
    pub fn push_eos(&self) {
        self.lock().jobs.push_back(Job::Eos);
        self.cond.notify_all();
    }

    /// Queues an utterance when fewer than `limit` wait. At a full queue, with `drop_oldest`
    /// the oldest waiting utterance makes room and is returned; otherwise the caller waits for
    /// room. A flush, or a flow error downstream, is returned instead.
    pub fn push_utterance(
        &self,
        u: Utterance,
        limit: usize,
        drop_oldest: bool,
    ) -> Result<Option<Utterance>, gst::FlowError> {
        let mut dropped = None;
        let mut q = self.lock();
        loop {
            if q.flushing {
                return Err(gst::FlowError::Flushing);
            }
            if let Some(flow) = q.flow {
                return Err(flow);
            }
            if q.waiting_utterances() < limit {
                break;
            }
            if drop_oldest {
                let i = q
                    .jobs
                    .iter()
                    .position(|j| matches!(j, Job::Utterance(_)))
                    .expect("the queue holds utterances");
                if let Some(Job::Utterance(old)) = q.jobs.remove(i) {
                    dropped = Some(old);
                }
                break;
            }
            q = self.wait(q);
        }
        q.jobs.push_back(Job::Utterance(u));
        self.cond.notify_all();
        Ok(dropped)
    }

    /// The next job, waiting for one, and whether the output timeline restarts before it;
    /// `None` when flushing.
    pub fn pop(&self) -> Option<(Job, bool)> {
        let mut q = self.lock();
        loop {
            if q.flushing {
                return None;
            }
            if let Some(j) = q.jobs.pop_front() {
                let restart = std::mem::take(&mut q.restart_timeline);
                // Room in the queue for a blocked streaming thread.
                self.cond.notify_all();
                return Some((j, restart));
            }
            q = self.wait(q);
        }
    }

    /// A job ended with `flow`: kept for the chain function (EOS is not an error), and a blocked
    /// streaming thread is woken to see it.
    pub fn job_failed(&self, flow: gst::FlowError) {
        let mut q = self.lock();
        if flow != gst::FlowError::Eos {
            q.flow = Some(flow);
        }
        self.cond.notify_all();
    }
}
