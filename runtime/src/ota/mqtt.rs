//! MQTT connection options shared by the device agent and the host publisher: broker URL,
//! TLS (server CA, optional client certificate), credentials file, packet-size limits, and the
//! event pump that turns a connection into a channel of [`MqttEvent`]s.

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tolk_config::protocol::{BrokerUrl, MAX_BLOCK_HEADER, MAX_BLOCK_SIZE, MAX_JOB_DOCUMENT};

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
    // rumqttc's default limit is 10 KiB; blocks are up to 128 KiB.
    o.set_max_packet_size(max_packet_size(), max_packet_size());
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
    /// The connection failed; rumqttc reconnects on the next poll.
    Disconnected(String),
}

/// Polls `connection` on its own thread and forwards connection acks, incoming publishes and
/// errors (then waits 300 ms before the reconnecting poll). Ends when the receiver is dropped or
/// `stop` is set.
pub fn spawn_event_pump(
    mut connection: rumqttc::Connection,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> std::io::Result<(
    std::sync::mpsc::Receiver<MqttEvent>,
    std::thread::JoinHandle<()>,
)> {
    use rumqttc::{Event, Packet};
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("mqtt-poll".into())
        .spawn(move || {
            for ev in connection.iter() {
                if stop
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                {
                    break;
                }
                let (msg, failed) = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => (MqttEvent::Connected, false),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        (MqttEvent::Publish(p.topic, p.payload.to_vec()), false)
                    }
                    Ok(_) => continue,
                    Err(e) => (MqttEvent::Disconnected(e.to_string()), true),
                };
                if tx.send(msg).is_err() {
                    break;
                }
                if failed {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        })?;
    Ok((rx, handle))
}
