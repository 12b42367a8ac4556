//! The host publisher behind `tolk-train publish` (beside the agent, so that the tests of the
//! `tolk` agent process drive it too): sends a signed bundle to one device through the broker and
//! follows the job to its end. The job document is retained on `jobs/notify` (a device that connects later
//! still gets it) and cleared once the job ends; blocks are served on request, so a device
//! resumes after its own or the broker's restart by asking for what it misses.

use crate::mqtt::{options, spawn_event_pump, BrokerSettings, MqttEvent, MqttSetupError};
use rumqttc::{Client, QoS};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tolk_config::bundle::{read_metadata, Manifest};
use tolk_config::protocol::{
    Block, BlockRequest, JobDocument, StatusReport, Topics, Transfer, DEFAULT_PREFIX,
};

/// How the bundle's bytes travel.
#[derive(Debug, Clone)]
pub enum TransferMode {
    Mqtt {
        block_size: u32,
    },
    /// The device reads the files at this URL (`file:///...`).
    Url(String),
}

/// Faults the publisher can inject into the data plane (threat row 9 of deploy/README.md).
#[derive(Debug, Clone, Default)]
pub struct Chaos {
    /// Drop every n-th block the first time it is asked for.
    pub drop_every: Option<usize>,
    /// Send every block twice.
    pub duplicate: bool,
    /// Answer each request in reverse order.
    pub reverse: bool,
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub bundle: PathBuf,
    pub device: String,
    pub broker: BrokerSettings,
    pub topic_prefix: String,
    pub job_id: String,
    pub transfer: TransferMode,
    pub timeout: Duration,
    pub chaos: Chaos,
}

impl PublishOptions {
    pub fn new(bundle: &Path, device: &str, broker: BrokerSettings, job_id: &str) -> Self {
        Self {
            bundle: bundle.to_path_buf(),
            device: device.into(),
            broker,
            topic_prefix: DEFAULT_PREFIX.into(),
            job_id: job_id.into(),
            transfer: TransferMode::Mqtt {
                block_size: 64 * 1024,
            },
            timeout: Duration::from_secs(120),
            chaos: Chaos::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Bundle(#[from] tolk_config::bundle::BundleError),
    #[error(transparent)]
    Setup(#[from] MqttSetupError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no final status from device {device} within {secs} s (last: {last})")]
    Timeout {
        device: String,
        secs: u64,
        last: String,
    },
    #[error("mqtt: {0}")]
    Client(String),
}

/// What the publisher counted.
#[derive(Debug, Clone, Default)]
pub struct PublishStats {
    pub blocks_sent: usize,
    pub blocks_dropped: usize,
    pub requests: usize,
    pub connects: usize,
}

/// Publishes the job, serves blocks, and returns the device's final status report.
pub fn publish(
    o: &PublishOptions,
    mut on_status: impl FnMut(&StatusReport),
) -> Result<(StatusReport, PublishStats), PublishError> {
    let (mbytes, sbytes) = read_metadata(&o.bundle)?;
    // The host's own bundle; the device verifies the signature.
    let manifest = Manifest::parse(&mbytes)?;
    let transfer = match &o.transfer {
        TransferMode::Mqtt { block_size } => Transfer::Mqtt {
            block_size: *block_size,
        },
        TransferMode::Url(base) => Transfer::Url { base: base.clone() },
    };
    let block_size = match transfer {
        Transfer::Mqtt { block_size } => block_size as u64,
        _ => 0,
    };
    let doc = serde_json::to_vec(&JobDocument::install(&o.job_id, &mbytes, &sbytes, transfer))
        .expect("job serialises");
    let topics = Topics::new(&o.topic_prefix, &o.device);
    let client_id = format!("tolk-publisher-{}", rand::random::<u32>());
    let (client, connection) = Client::new(options(&o.broker, &client_id, None)?, 512);
    let (rx, _pump) = spawn_event_pump(connection, None)
        .map_err(|e| PublishError::Client(format!("starting the MQTT poller: {e}")))?;
    let cerr = |e: rumqttc::ClientError| PublishError::Client(e.to_string());
    let mut stats = PublishStats::default();
    let mut asked: std::collections::HashSet<(u32, u32)> = Default::default();
    let mut last = String::from("nothing");
    let start = Instant::now();
    let result = loop {
        let left = o.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break Err(PublishError::Timeout {
                device: o.device.clone(),
                secs: o.timeout.as_secs(),
                last,
            });
        }
        let msg = match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(PublishError::Client("event loop ended".into()))
            }
        };
        match msg {
            MqttEvent::Connected => {
                stats.connects += 1;
                client
                    .subscribe(topics.job_status.as_str(), QoS::AtLeastOnce)
                    .map_err(cerr)?;
                client
                    .subscribe(topics.block_request.as_str(), QoS::AtLeastOnce)
                    .map_err(cerr)?;
                client
                    .publish(
                        topics.job_notify.as_str(),
                        QoS::AtLeastOnce,
                        true,
                        doc.clone(),
                    )
                    .map_err(cerr)?;
            }
            MqttEvent::Publish(topic, payload) if topic == topics.job_status => {
                let Ok(r) = serde_json::from_slice::<StatusReport>(&payload) else {
                    continue;
                };
                if r.job_id != o.job_id {
                    continue;
                }
                on_status(&r);
                last = format!("{:?} {}", r.status, r.reason);
                if r.status.is_terminal() {
                    // The job is over: clear the retained notification.
                    client
                        .publish(
                            topics.job_notify.as_str(),
                            QoS::AtLeastOnce,
                            true,
                            Vec::<u8>::new(),
                        )
                        .map_err(cerr)?;
                    std::thread::sleep(Duration::from_millis(200));
                    break Ok(r);
                }
            }
            MqttEvent::Publish(topic, payload) if topic == topics.block_request => {
                let Ok(req) = BlockRequest::decode(&payload) else {
                    continue;
                };
                if req.job_id != o.job_id || block_size == 0 {
                    continue;
                }
                let Some(entry) = manifest.files.get(req.file as usize) else {
                    continue;
                };
                stats.requests += 1;
                let path = o.bundle.join(&entry.path);
                let file = std::fs::File::open(&path).map_err(|source| PublishError::Io {
                    path: path.clone(),
                    source,
                })?;
                let mut blocks = req.blocks.clone();
                if o.chaos.reverse {
                    blocks.reverse();
                }
                for index in blocks {
                    let offset = index as u64 * block_size;
                    if offset >= entry.size.max(1) {
                        continue;
                    }
                    let first_time = asked.insert((req.file, index));
                    if let Some(n) = o.chaos.drop_every {
                        if first_time && asked.len().is_multiple_of(n) {
                            stats.blocks_dropped += 1;
                            continue;
                        }
                    }
                    let len = (entry.size - offset).min(block_size) as usize;
                    let mut data = vec![0u8; len];
                    file.read_exact_at(&mut data, offset)
                        .map_err(|source| PublishError::Io {
                            path: path.clone(),
                            source,
                        })?;
                    let payload = Block {
                        job_id: o.job_id.clone(),
                        file: req.file,
                        index,
                        data,
                    }
                    .encode();
                    let copies = if o.chaos.duplicate { 2 } else { 1 };
                    for _ in 0..copies {
                        client
                            .publish(
                                topics.block_data.as_str(),
                                QoS::AtLeastOnce,
                                false,
                                payload.clone(),
                            )
                            .map_err(cerr)?;
                        stats.blocks_sent += 1;
                    }
                }
            }
            MqttEvent::Publish(..) => {}
            MqttEvent::Disconnected { error, .. } => {
                tracing::debug!(%error, "publisher connection error; retrying")
            }
        }
    };
    let _ = client.disconnect();
    result.map(|r| (r, stats))
}
