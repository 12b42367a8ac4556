//! [`DisplayHub`]: the event sink behind the kiosk's pages. Every event the pipeline emits (the
//! same records `--events` prints) is broadcast to the connected browsers as its JSON line, and
//! folded into a [`Snapshot`] that a page receives first when it connects or reconnects, or
//! when it fell behind.
//!
//! The broadcast channel is bounded: a browser that reads too slowly loses its place (it gets a
//! fresh snapshot instead of the events it missed) and never holds the pipeline back; `emit`
//! takes one short lock and never waits for a reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::events::{Event, EventRecord, EventSink};
use crate::pipeline::PipelineControl;

/// Events buffered per browser before a slow one is resynchronised with a snapshot.
pub const BROADCAST_CAPACITY: usize = 512;

/// What a page shows at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KioskState {
    /// Waiting for a visitor.
    Listening,
    /// A visitor is speaking.
    Hearing,
    /// Speech ended; the translation is being decoded.
    Translating,
    /// The translated speech is playing.
    Speaking,
    /// The operator paused listening.
    Paused,
}

/// One exchange on the page: what was heard and what it means.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    pub utterance: u64,
    pub direction: String,
    /// Seconds of speech heard (the modes without source text show this instead).
    pub heard_s: f64,
    /// The translation so far (complete once `done`).
    pub text: String,
    pub done: bool,
    /// Below the minimum confidence: the page asks the visitor to repeat.
    pub not_understood: bool,
}

/// The state a newly connected page starts from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub device: String,
    pub model: String,
    pub direction: String,
    pub offered: Vec<String>,
    pub listening: bool,
    pub state: KioskState,
    /// The exchange in progress or the last one, then older ones (newest first), at most
    /// `history` in all.
    pub exchanges: VecDeque<Exchange>,
    pub history: usize,
}

impl Snapshot {
    fn exchange(&mut self, utterance: u64) -> Option<&mut Exchange> {
        self.exchanges.iter_mut().find(|e| e.utterance == utterance)
    }

    fn settle(&mut self) {
        if !self.listening {
            self.state = KioskState::Paused;
        }
    }

    /// Folds one event in, as the page's script does.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::UtteranceStart {
                utterance,
                direction,
                ..
            } => {
                self.exchanges.push_front(Exchange {
                    utterance: *utterance,
                    direction: direction.clone(),
                    heard_s: 0.0,
                    text: String::new(),
                    done: false,
                    not_understood: false,
                });
                self.exchanges.truncate(self.history);
                self.state = KioskState::Hearing;
            }
            Event::UtteranceEnd {
                utterance,
                start_s,
                end_s,
                ..
            } => {
                if let Some(e) = self.exchange(*utterance) {
                    e.heard_s = end_s - start_s;
                }
                self.state = KioskState::Translating;
            }
            Event::SubtitlePartial {
                utterance, text, ..
            } => {
                if let Some(e) = self.exchange(*utterance) {
                    e.text.clone_from(text);
                }
            }
            Event::SubtitleFinal {
                utterance, text, ..
            } => {
                if let Some(e) = self.exchange(*utterance) {
                    e.text.clone_from(text);
                    e.done = true;
                }
            }
            Event::NotUnderstood { utterance, .. } => {
                if let Some(e) = self.exchange(*utterance) {
                    e.text.clear();
                    e.done = true;
                    e.not_understood = true;
                }
                self.state = KioskState::Listening;
            }
            Event::AudioChunk { .. } => self.state = KioskState::Speaking,
            Event::UtteranceDone { .. } => self.state = KioskState::Listening,
            Event::UtteranceDropped { utterance, .. } => {
                // A dropped utterance that never got its text leaves the page.
                self.exchanges
                    .retain(|e| e.utterance != *utterance || e.done);
                self.state = KioskState::Listening;
            }
            Event::DirectionChanged { direction, .. } => self.direction.clone_from(direction),
            Event::ListeningChanged { listening, .. } => {
                self.listening = *listening;
                self.state = KioskState::Listening;
            }
            Event::DirectionRefused { .. }
            | Event::SourceLost { .. }
            | Event::SourceEnded { .. } => {}
        }
        self.settle();
    }
}

/// Broadcast of the pipeline's events to the pages, with the snapshot they start from.
pub struct DisplayHub {
    tx: broadcast::Sender<Arc<str>>,
    snapshot: Mutex<Snapshot>,
    control: Arc<PipelineControl>,
    clients: AtomicUsize,
    max_clients: usize,
}

impl DisplayHub {
    /// A hub for the pipeline behind `control`; `history` exchanges are kept for new pages.
    pub fn new(
        device: &str,
        model: &str,
        control: Arc<PipelineControl>,
        history: usize,
        max_clients: usize,
    ) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let snapshot = Snapshot {
            device: device.into(),
            model: model.into(),
            direction: control.direction().as_str().into(),
            offered: control
                .offered()
                .iter()
                .map(|d| d.as_str().to_string())
                .collect(),
            listening: control.listening(),
            state: KioskState::Listening,
            exchanges: VecDeque::with_capacity(history.max(1)),
            history: history.max(1),
        };
        Self {
            tx,
            snapshot: Mutex::new(snapshot),
            control,
            clients: AtomicUsize::new(0),
            max_clients: max_clients.max(1),
        }
    }

    pub fn control(&self) -> &Arc<PipelineControl> {
        &self.control
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A cursor on the live events (JSON lines).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// Browsers connected to the live stream now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// A place for one more live client, or `None` at `max_clients`.
    pub fn admit(self: &Arc<Self>) -> Option<ClientSlot> {
        let mut n = self.clients.load(Ordering::Relaxed);
        loop {
            if n >= self.max_clients {
                return None;
            }
            match self
                .clients
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(ClientSlot(self.clone())),
                Err(seen) => n = seen,
            }
        }
    }
}

/// One admitted live client; dropping it frees the place.
pub struct ClientSlot(Arc<DisplayHub>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventSink for DisplayHub {
    fn emit(&self, record: &EventRecord) {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&record.event);
        // No receiver is not an error: no page is open.
        let _ = self.tx.send(Arc::from(record.to_json()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Collect;
    use tolk_models::translator::Direction;

    fn hub(history: usize) -> Arc<DisplayHub> {
        let control = Arc::new(PipelineControl::new(
            Direction::EnFr,
            &[Direction::FrEn],
            Arc::new(Collect::default()),
        ));
        Arc::new(DisplayHub::new("k1", "demo", control, history, 2))
    }

    fn utterance(h: &DisplayHub, id: u64, text: &str) {
        let d = "en-fr".to_string();
        for e in [
            Event::UtteranceStart {
                utterance: id,
                direction: d.clone(),
                start_s: 1.0,
            },
            Event::UtteranceEnd {
                utterance: id,
                direction: d.clone(),
                start_s: 1.0,
                end_s: 2.5,
                cause: tolk_models::audio::endpoint::EndReason::Silence,
            },
            Event::SubtitlePartial {
                utterance: id,
                direction: d.clone(),
                text: text[..1].into(),
                latency_ms: 10.0,
            },
        ] {
            h.emit(&EventRecord::now(e));
        }
        assert_eq!(h.snapshot().state, KioskState::Translating);
        h.emit(&EventRecord::now(Event::SubtitleFinal {
            utterance: id,
            direction: d.clone(),
            text: text.into(),
            first_text_ms: 10.0,
            latency_ms: 20.0,
            confidence: 0.9,
        }));
        h.emit(&EventRecord::now(Event::AudioChunk {
            utterance: id,
            direction: d.clone(),
            offset: 0,
            samples: 160,
            sample_rate: 16000,
            latency_ms: 30.0,
        }));
        assert_eq!(h.snapshot().state, KioskState::Speaking);
        h.emit(&EventRecord::now(Event::UtteranceDone {
            utterance: id,
            direction: d,
            rtf: 0.2,
            first_audio_ms: Some(30.0),
        }));
    }

    #[test]
    fn snapshot_follows_the_events_and_keeps_only_the_history() {
        let h = hub(3);
        let mut rx = h.subscribe();
        for i in 1..=10 {
            utterance(&h, i, &format!("phrase {i}"));
        }
        let s = h.snapshot();
        assert_eq!(s.state, KioskState::Listening);
        let ids: Vec<u64> = s.exchanges.iter().map(|e| e.utterance).collect();
        assert_eq!(ids, [10, 9, 8]);
        assert_eq!(s.exchanges[0].text, "phrase 10");
        assert!(s.exchanges[0].done);
        assert!((s.exchanges[0].heard_s - 1.5).abs() < 1e-9);
        // The live stream carries the same JSON lines as `--events`.
        let first = rx.try_recv().unwrap();
        let rec = EventRecord::from_json(&first).unwrap();
        assert!(matches!(
            rec.event,
            Event::UtteranceStart { utterance: 1, .. }
        ));

        h.control()
            .set_listening(false, crate::pipeline::Requester::Operator);
        // The control announces on its own sink (here a collector): the hub sees it when the
        // pipeline's sink includes it, as `tolk run` wires it.
        h.emit(&EventRecord::now(Event::ListeningChanged {
            listening: false,
            by: "operator".into(),
        }));
        assert_eq!(h.snapshot().state, KioskState::Paused);
    }

    #[test]
    fn a_reader_that_falls_behind_loses_its_place_not_the_pipeline() {
        let h = hub(2);
        let mut slow = h.subscribe();
        for i in 0..(BROADCAST_CAPACITY as u64 * 4) {
            utterance(&h, i + 1, "x");
        }
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert!(n > 0),
            other => panic!("expected a lag, got {other:?}"),
        }
    }

    #[test]
    fn a_dropped_utterance_without_text_leaves_the_page() {
        let h = hub(4);
        utterance(&h, 1, "bonjour");
        h.emit(&EventRecord::now(Event::UtteranceStart {
            utterance: 2,
            direction: "en-fr".into(),
            start_s: 9.0,
        }));
        assert_eq!(h.snapshot().exchanges.len(), 2);
        h.emit(&EventRecord::now(Event::UtteranceDropped {
            utterance: 2,
            direction: "en-fr".into(),
            reason: "listening paused by the operator".into(),
            queue_depth: 0,
        }));
        let s = h.snapshot();
        let ids: Vec<u64> = s.exchanges.iter().map(|e| e.utterance).collect();
        assert_eq!(ids, [1]);
        assert_eq!(s.state, KioskState::Listening);
    }

    #[test]
    fn admits_at_most_max_clients() {
        let h = hub(2);
        let a = h.admit().unwrap();
        let _b = h.admit().unwrap();
        assert!(h.admit().is_none());
        assert_eq!(h.clients(), 2);
        drop(a);
        assert!(h.admit().is_some());
    }
}
