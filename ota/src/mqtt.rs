//! MQTT connection options shared by the device agent and the host publisher: broker URL,
//! TLS (server CA, optional client certificate), credentials file, packet-size limits, and the
//! event pump that turns a connection into a channel of [`MqttEvent`]s.

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tolk_config::protocol::{
    BrokerUrl, MAX_BLOCK_HEADER, MAX_BLOCK_SIZE, MAX_INCOMING_PACKET, MAX_JOB_DOCUMENT,
};

/// How to reach a broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerSettings {
    pub url: String,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    pub keep_alive_s: u16,
}

impl BrokerSettings {
    pub fn from_config(m: &tolk_config::MqttSection) -> Self {
        Self {
            url: m.broker.clone(),
            ca: m.ca.clone(),
            client_cert: m.client_cert.clone(),
            client_key: m.client_key.clone(),
            credentials: m.credentials.clone(),
            keep_alive_s: m.keep_alive_s,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    #[error("broker URL: {0}")]
    Url(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, MqttSetupError> {
    std::fs::read(path).map_err(|source| MqttSetupError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Largest packet either side sends: a data block with its header, or a job document.
/// (Incoming packets may be larger, up to [`MAX_INCOMING_PACKET`], so that an oversize message is
/// refused by its decoder instead of breaking the connection.)
pub fn max_packet_size() -> usize {
    (MAX_BLOCK_SIZE as usize + MAX_BLOCK_HEADER).max(MAX_JOB_DOCUMENT) + 1024
}

/// Builds rumqttc options. `will`: retained last will (topic, payload).
pub fn options(
    s: &BrokerSettings,
    client_id: &str,
    will: Option<(String, Vec<u8>)>,
) -> Result<MqttOptions, MqttSetupError> {
    // rustls needs a process-wide crypto provider; installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = BrokerUrl::parse(&s.url).map_err(MqttSetupError::Url)?;
    let mut o = MqttOptions::new(client_id, url.host.clone(), url.port);
    o.set_keep_alive(Duration::from_secs(s.keep_alive_s.max(5) as u64));
    // Clean session: subscriptions vanish on reconnect, so every ConnAck re-subscribes.
    o.set_clean_session(true);
    // rumqttc's default limit is 10 KiB; blocks are up to 128 KiB. Incoming packets up to
    // MAX_INCOMING_PACKET are read whole and judged by the decoders (see there).
    o.set_max_packet_size(MAX_INCOMING_PACKET, max_packet_size());
    o.set_inflight(32);
    if let Some((topic, payload)) = will {
        o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    if let Some(c) = &s.credentials {
        let text = String::from_utf8(read(c)?)
            .map_err(|_| MqttSetupError::Config(format!("{}: not UTF-8", c.display())))?;
        let (u, p) = text.trim().split_once(':').ok_or_else(|| {
            MqttSetupError::Config(format!("{}: expected `username:password`", c.display()))
        })?;
        o.set_credentials(u, p);
    }
    if url.tls {
        let ca =
            s.ca.as_ref()
                .ok_or_else(|| MqttSetupError::Config("mqtts:// needs a CA certificate".into()))?;
        let client_auth = match (&s.client_cert, &s.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(MqttSetupError::Config(
                    "client certificate and key must be given together".into(),
                ))
            }
        };
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: read(ca)?,
            alpn: None,
            client_auth,
        }));
    } else if s.ca.is_some() || s.client_cert.is_some() {
        return Err(MqttSetupError::Config(
            "TLS files given for a plain mqtt:// broker: use mqtts://".into(),
        ));
    }
    Ok(o)
}

/// What the event pump passes on from a connection.
#[derive(Debug)]
pub enum MqttEvent {
    /// (Re)connected: subscriptions must be made again.
    Connected,
    Publish(String, Vec<u8>),
    /// The connection failed; the pump reconnects after `retry_in`.
    Disconnected {
        error: String,
        /// Set when a packet of this many bytes (remaining length) above
        /// [`MAX_INCOMING_PACKET`] broke the connection.
        oversize: Option<usize>,
        retry_in: Duration,
    },
}

/// Delays between reconnection attempts: doubling from 300 ms up to 16 s, back to the start
/// once a connection has stayed up for [`Backoff::STABLE`]. A message that breaks every
/// connection (a retained packet above the limit on a misconfigured broker) thus costs one
/// reconnect every 16 s, not a tight loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    connected_at: Option<std::time::Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Self::FIRST,
            connected_at: None,
        }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(300);
    pub const MAX: Duration = Duration::from_secs(16);
    pub const STABLE: Duration = Duration::from_secs(30);

    pub fn connected(&mut self, now: std::time::Instant) {
        self.connected_at = Some(now);
    }

    /// The delay before the next attempt after a failure at `now`.
    pub fn failed(&mut self, now: std::time::Instant) -> Duration {
        if self
            .connected_at
            .take()
            .is_some_and(|t| now.duration_since(t) >= Self::STABLE)
        {
            self.next = Self::FIRST;
        }
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// The remaining length of the packet that broke the connection, when that was the cause.
fn oversize_of(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// Polls `connection` on its own thread and forwards connection acks, incoming publishes and
/// errors, waiting as [`Backoff`] says before the reconnecting poll. Ends when the receiver is
/// dropped or `stop` is set (checked at least every 200 ms while waiting).
pub fn spawn_event_pump(
    mut connection: rumqttc::Connection,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> std::io::Result<(
    std::sync::mpsc::Receiver<MqttEvent>,
    std::thread::JoinHandle<()>,
)> {
    use rumqttc::{Event, Packet};
    let (tx, rx) = std::sync::mpsc::channel();
    let stopped = move || {
        stop.as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    };
    let handle = std::thread::Builder::new()
        .name("mqtt-poll".into())
        .spawn(move || {
            let mut backoff = Backoff::default();
            for ev in connection.iter() {
                if stopped() {
                    break;
                }
                let (msg, wait) = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.connected(std::time::Instant::now());
                        (MqttEvent::Connected, None)
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        (MqttEvent::Publish(p.topic, p.payload.to_vec()), None)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let retry_in = backoff.failed(std::time::Instant::now());
                        let msg = MqttEvent::Disconnected {
                            error: e.to_string(),
                            oversize: oversize_of(&e),
                            retry_in,
                        };
                        (msg, Some(retry_in))
                    }
                };
                if tx.send(msg).is_err() {
                    break;
                }
                if let Some(wait) = wait {
                    let until = std::time::Instant::now() + wait;
                    while std::time::Instant::now() < until && !stopped() {
                        std::thread::sleep(Duration::from_millis(50).min(wait));
                    }
                }
            }
        })?;
    Ok((rx, handle))
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::{Duration, Instant};

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_stable_connection() {
        let mut b = Backoff::default();
        let t = Instant::now();
        let seq: Vec<u64> = (0..8).map(|_| b.failed(t).as_millis() as u64).collect();
        assert_eq!(seq, [300, 600, 1200, 2400, 4800, 9600, 16000, 16000]);
        // A short-lived connection (the oversize loop) does not reset it.
        b.connected(t);
        assert_eq!(b.failed(t + Duration::from_secs(1)), Backoff::MAX);
        // One that stayed up does.
        b.connected(t);
        assert_eq!(b.failed(t + Backoff::STABLE), Backoff::FIRST);
    }

    /// The shipped broker refuses what the device could not read (threat row 19 of deploy/README.md).
    #[test]
    fn shipped_broker_limit_is_the_devices() {
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/mosquitto/tolk.conf"
        ))
        .unwrap();
        let limit: usize = conf
            .lines()
            .find_map(|l| l.strip_prefix("max_packet_size "))
            .expect("tolk.conf sets max_packet_size")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(limit, tolk_config::protocol::MAX_INCOMING_PACKET);
        assert!(limit > super::max_packet_size());
    }
}
