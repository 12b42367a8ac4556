//! Run-time control of a running [`Pipeline`](super::Pipeline): the direction of the next
//! utterances (a visitor's tap on the subtitle page, an operator's MQTT command) and whether the
//! kiosk listens at all. Reads are single atomic loads, so the pipeline thread checks them on
//! every audio read without locking.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tolk_models::translator::Direction;

use crate::events::{Event, EventRecord, EventSink};

/// Why a direction switch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown direction {0:?} (expected en-fr or fr-en)")]
    Unknown(String),
    #[error("this kiosk does not translate {requested} (it offers {offered})")]
    NotOffered {
        requested: Direction,
        offered: String,
    },
}

/// Who asked for a change, as the `by` field of the events says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// The subtitle page (a visitor).
    Visitor,
    /// The operator page, with the operator token.
    Operator,
    /// The MQTT control topic.
    Mqtt,
}

impl Requester {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visitor => "visitor",
            Self::Operator => "operator",
            Self::Mqtt => "mqtt",
        }
    }
}

/// The shared switches of one pipeline. Changes are announced on the pipeline's event stream
/// (`direction_changed`, `direction_refused`, `listening_changed`), so every page and log sees
/// the same state.
pub struct PipelineControl {
    /// Directions the model and the configuration both offer; never empty.
    offered: Vec<Direction>,
    /// Index into `offered` of the direction the next utterance gets.
    current: AtomicUsize,
    listening: AtomicBool,
    events: Arc<dyn EventSink>,
}

impl PipelineControl {
    /// `initial` first in the offered list when it is not there already.
    pub fn new(initial: Direction, offered: &[Direction], events: Arc<dyn EventSink>) -> Self {
        let mut list = vec![initial];
        list.extend(offered.iter().copied().filter(|d| *d != initial));
        Self {
            offered: list,
            current: AtomicUsize::new(0),
            listening: AtomicBool::new(true),
            events,
        }
    }

    /// The direction the next utterance is translated in.
    pub fn direction(&self) -> Direction {
        self.offered[self
            .current
            .load(Ordering::Relaxed)
            .min(self.offered.len() - 1)]
    }

    /// Every direction a switch may choose, the initial one first.
    pub fn offered(&self) -> &[Direction] {
        &self.offered
    }

    /// Switches the direction of the next utterances (an utterance already heard keeps its
    /// own). A refused request is announced too, so the page that asked can show why.
    pub fn set_direction(&self, requested: &str, by: Requester) -> Result<Direction, ControlError> {
        let result = match Direction::parse(requested) {
            Err(_) => Err(ControlError::Unknown(requested.chars().take(32).collect())),
            Ok(d) => match self.offered.iter().position(|o| *o == d) {
                Some(i) => {
                    self.current.store(i, Ordering::Relaxed);
                    Ok(d)
                }
                None => Err(ControlError::NotOffered {
                    requested: d,
                    offered: self
                        .offered
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
        };
        let event = match &result {
            Ok(d) => {
                tracing::info!(direction = %d, by = by.as_str(), "direction switched");
                Event::DirectionChanged {
                    direction: d.as_str().into(),
                    by: by.as_str().into(),
                }
            }
            Err(e) => {
                tracing::warn!(by = by.as_str(), "direction switch refused: {e}");
                Event::DirectionRefused {
                    requested: requested.chars().take(32).collect(),
                    reason: e.to_string(),
                    by: by.as_str().into(),
                }
            }
        };
        self.events.emit(&EventRecord::now(event));
        result
    }

    /// Whether the front end takes audio (an operator may pause the kiosk).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    pub fn set_listening(&self, on: bool, by: Requester) {
        if self.listening.swap(on, Ordering::Relaxed) != on {
            tracing::info!(listening = on, by = by.as_str(), "listening switched");
            self.events.emit(&EventRecord::now(Event::ListeningChanged {
                listening: on,
                by: by.as_str().into(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Collect;

    #[test]
    fn switches_only_to_offered_directions_and_announces_both_outcomes() {
        let events = Arc::new(Collect::default());
        let c = PipelineControl::new(Direction::EnFr, &[Direction::EnFr], events.clone());
        assert_eq!(c.offered(), &[Direction::EnFr]);
        let e = c.set_direction("fr-en", Requester::Visitor).unwrap_err();
        assert!(matches!(e, ControlError::NotOffered { .. }), "{e}");
        assert!(e.to_string().contains("offers en-fr"), "{e}");
        assert_eq!(c.direction(), Direction::EnFr);
        let e = c
            .set_direction(&"x".repeat(1000), Requester::Mqtt)
            .unwrap_err();
        assert!(
            matches!(e, ControlError::Unknown(ref s) if s.len() == 32),
            "{e}"
        );

        let c = PipelineControl::new(
            Direction::EnFr,
            &[Direction::FrEn, Direction::EnFr],
            events.clone(),
        );
        assert_eq!(c.offered(), &[Direction::EnFr, Direction::FrEn]);
        assert_eq!(
            c.set_direction("fr-en", Requester::Visitor),
            Ok(Direction::FrEn)
        );
        assert_eq!(c.direction(), Direction::FrEn);
        c.set_listening(false, Requester::Operator);
        c.set_listening(false, Requester::Operator);
        assert!(!c.listening());
        let names: Vec<String> = events
            .take()
            .iter()
            .map(|r| r.to_json())
            .map(|j| serde_json::from_str::<serde_json::Value>(&j).unwrap()["event"].to_string())
            .collect();
        assert_eq!(
            names,
            [
                "\"direction_refused\"",
                "\"direction_refused\"",
                "\"direction_changed\"",
                "\"listening_changed\""
            ]
        );
    }
}
