//! The device's MQTT agent: one thread owns the rumqttc event loop and keeps polling (polling
//! again after an error is the reconnect); the worker thread owns the [`Updater`] and publishes
//! through the client. Every ConnAck re-subscribes (clean sessions lose subscriptions) and
//! re-publishes the retained true state; the last will marks the device offline.

use crate::mqtt::{options, spawn_event_pump, BrokerSettings, MqttEvent};
use crate::updater::{unix_now, OtaError, Updater};
use rumqttc::{Client, QoS};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tolk_config::protocol::{
    Block, BlockRequest, JobDocument, RefusedMessage, Topics, Transfer, MAX_INCOMING_PACKET,
};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub device_id: String,
    pub topic_prefix: String,
    pub broker: BrokerSettings,
    /// Silence after which missing blocks are requested again.
    pub stall_timeout: Duration,
    /// Blocks requested at once.
    pub window: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Setup(#[from] crate::mqtt::MqttSetupError),
    #[error(transparent)]
    Ota(#[from] OtaError),
}

fn offline_payload(device: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"status": "offline", "device": device})).unwrap()
}

/// Runs until `stop` is set. `on_ready` is called once the first ConnAck has been handled
/// (systemd readiness). `on_tick` is called about every 200 ms (systemd watchdog).
pub fn run(
    mut updater: Updater,
    opts: AgentOptions,
    stop: Arc<AtomicBool>,
    mut on_ready: impl FnMut(),
    mut on_tick: impl FnMut(),
) -> Result<(), AgentError> {
    let topics = Topics::new(&opts.topic_prefix, &opts.device_id);
    // A trial interrupted by a crash resumes (or is abandoned) before anything else.
    if updater.recover()? {
        updater.run_trial()?;
    }
    let mopts = options(
        &opts.broker,
        &opts.device_id,
        Some((topics.state.clone(), offline_payload(&opts.device_id))),
    )?;
    let (client, connection) = Client::new(mopts, 256);
    let (rx, poller) = spawn_event_pump(connection, Some(stop.clone())).expect("spawn mqtt poller");

    let publish = |topic: &str, retain: bool, payload: Vec<u8>| {
        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            tracing::warn!(topic, error = %e, "publish dropped (the state is re-published on reconnect)");
        }
    };
    // The last message refused before it could name a job, carried in the retained state.
    let mut refused: Option<RefusedMessage> = None;
    let publish_state = |u: &Updater, refused: &Option<RefusedMessage>| {
        let mut st = u.device_state();
        st.refused = refused.clone();
        publish(&topics.state, true, serde_json::to_vec(&st).unwrap());
    };

    let mut ready = false;
    let mut connected = false;
    let mut last_progress = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        on_tick();
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(MqttEvent::Connected) => {
                tracing::info!("connected; subscribing");
                connected = true;
                // The state first: a retained message the subscription delivers may break the
                // connection (a packet above the device's limit), and the state naming that
                // must already be on its way to the broker.
                publish_state(&updater, &refused);
                for t in [&topics.job_notify, &topics.block_data] {
                    if let Err(e) = client.try_subscribe(t.as_str(), QoS::AtLeastOnce) {
                        tracing::warn!(topic = %t, error = %e, "subscribe failed");
                    }
                }
                if let Some(j) = updater.job_mut() {
                    j.outstanding = 0; // ask again for whatever is missing
                }
                if !ready {
                    ready = true;
                    on_ready();
                }
            }
            Ok(MqttEvent::Disconnected {
                error,
                oversize,
                retry_in,
            }) => {
                if let Some(bytes) = oversize {
                    // Too large to read even its topic; the broker should never have
                    // forwarded it (its max_packet_size must be MAX_INCOMING_PACKET).
                    tracing::error!(
                        bytes,
                        limit = MAX_INCOMING_PACKET,
                        "a packet above the device's limit broke the connection"
                    );
                    refused = Some(RefusedMessage {
                        topic: String::new(),
                        bytes,
                        reason: format!(
                            "packet of {bytes} bytes above the device's {MAX_INCOMING_PACKET}-byte \
                             limit broke the connection; set the broker's max_packet_size to \
                             {MAX_INCOMING_PACKET} and clear the retained message"
                        ),
                        at: unix_now(),
                    });
                } else if connected {
                    tracing::warn!(%error, ?retry_in, "broker connection lost; reconnecting");
                }
                connected = false;
            }
            Ok(MqttEvent::Publish(topic, payload)) => {
                let mut changed = false;
                let handled = (|| -> Result<(), OtaError> {
                    if topic == topics.job_notify {
                        if payload.is_empty() {
                            return Ok(()); // retained job cleared
                        }
                        match JobDocument::decode(&payload) {
                            Err(e) => {
                                tracing::warn!(error = %e, "job document refused");
                                refused = Some(RefusedMessage {
                                    topic: topic.clone(),
                                    bytes: payload.len(),
                                    reason: format!("job document refused: {e}"),
                                    at: unix_now(),
                                });
                                changed = true;
                            }
                            Ok(doc) => {
                                updater.handle_job(&doc)?;
                                last_progress = Instant::now();
                                if matches!(doc.transfer, Some(Transfer::Url { .. })) {
                                    updater.fetch_url()?;
                                }
                            }
                        }
                    } else if topic == topics.block_data {
                        match Block::decode(&payload) {
                            Err(e) => tracing::warn!(error = %e, "block refused"),
                            Ok(b) => {
                                let outcome = updater.handle_block(&b)?;
                                tracing::debug!(file = b.file, index = b.index, ?outcome, "block");
                                last_progress = Instant::now();
                            }
                        }
                    }
                    updater.install_if_complete()?;
                    Ok(())
                })();
                // Whatever went wrong with one message (the device's state file could not be
                // written, say) is logged and the agent goes on: exiting would only restart
                // into the same retained message.
                if let Err(e) = handled {
                    tracing::error!(error = %e, "handling a message failed");
                    changed = true;
                }
                if changed {
                    publish_state(&updater, &refused);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Data plane: request the next window of missing blocks, or again after a stall.
        if connected {
            let stalled = last_progress.elapsed() > opts.stall_timeout;
            if let Some(job) = updater.job_mut() {
                if matches!(job.transfer, Transfer::Mqtt { .. })
                    && (job.outstanding == 0 || stalled)
                {
                    let mut n = 0;
                    for (file, blocks) in job.missing(opts.window) {
                        n += blocks.len();
                        let req = BlockRequest {
                            job_id: job.job_id.clone(),
                            file,
                            blocks,
                        };
                        publish(
                            &topics.block_request,
                            false,
                            serde_json::to_vec(&req).unwrap(),
                        );
                    }
                    job.outstanding = n;
                    if stalled && n > 0 {
                        tracing::info!(
                            missing = n,
                            "transfer stalled; requesting missing blocks again"
                        );
                    }
                    last_progress = Instant::now();
                }
            }
        }
        let reports = updater.take_reports();
        if !reports.is_empty() {
            for r in &reports {
                publish(&topics.job_status, false, serde_json::to_vec(r).unwrap());
            }
            publish_state(&updater, &refused);
        }
    }
    // Graceful stop: say offline ourselves (the will covers crashes).
    let _ = client.try_publish(
        &topics.state,
        QoS::AtLeastOnce,
        true,
        offline_payload(&opts.device_id),
    );
    std::thread::sleep(Duration::from_millis(100));
    let _ = client.disconnect();
    drop(rx);
    // The poller ends on its own when the channel closes; it is not joined (a blocked reconnect
    // attempt must not hold up shutdown).
    drop(poller);
    Ok(())
}
