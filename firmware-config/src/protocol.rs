//! The OTA wire protocol over MQTT, shared by the device agent and the host publisher.
//!
//! Topic tree (prefix `tolk/devices`, `{id}` = device id), in the spirit of AWS IoT Jobs
//! (docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html):
//!
//! | topic | direction | QoS | retained | payload |
//! |---|---|---|---|---|
//! | `{prefix}/{id}/state` | device -> host | 1 | yes | [`DeviceState`] JSON; last will `{"status":"offline"}` |
//! | `{prefix}/{id}/jobs/notify` | host -> device | 1 | yes | [`JobDocument`] JSON |
//! | `{prefix}/{id}/jobs/status` | device -> host | 1 | no | [`StatusReport`] JSON |
//! | `{prefix}/{id}/blocks/request` | device -> host | 1 | no | [`BlockRequest`] JSON |
//! | `{prefix}/{id}/blocks/data` | host -> device | 1 | no | binary block, see [`Block`] |
//! | `{prefix}/{id}/subtitles` | device -> host | 0 | no | the kiosk's events (`tolk run`), JSON |
//! | `{prefix}/{id}/control` | host -> device | 1 | no | [`ControlCommand`] JSON (`tolk run`) |

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const DEFAULT_PREFIX: &str = "tolk/devices";
/// Largest data-plane block (AWS IoT caps MQTT payloads near 128 KiB).
pub const MAX_BLOCK_SIZE: u32 = 128 * 1024;
/// Block header bytes on top of the data (magic, version, job id, indices, length, hash).
pub const MAX_BLOCK_HEADER: usize = 4 + 1 + 1 + 64 + 4 + 4 + 4 + 32;
/// Largest job document (base64 manifest of 64 KiB plus signatures and fields).
pub const MAX_JOB_DOCUMENT: usize = 128 * 1024;
/// Largest control message other than a job document.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;
/// Largest MQTT packet (remaining length) the device reads off the wire. It sits well above the
/// largest valid message so that an oversize job document or block is read whole, refused by
/// its decoder and reported, instead of breaking the connection (a retained message that breaks
/// the connection would be delivered again on every reconnect). The shipped broker config sets
/// `max_packet_size` to this number so that nothing larger is ever stored or forwarded.
pub const MAX_INCOMING_PACKET: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("payload of {len} bytes is above the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
}

fn malformed(what: &'static str, message: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed {
        what,
        message: message.into(),
    }
}

/// Topic names of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub state: String,
    pub job_notify: String,
    pub job_status: String,
    pub block_request: String,
    pub block_data: String,
    pub subtitles: String,
    pub control: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Self {
        let base = format!("{prefix}/{device}");
        Self {
            state: format!("{base}/state"),
            job_notify: format!("{base}/jobs/notify"),
            job_status: format!("{base}/jobs/status"),
            block_request: format!("{base}/blocks/request"),
            block_data: format!("{base}/blocks/data"),
            subtitles: format!("{base}/subtitles"),
            control: format!("{base}/control"),
        }
    }
}

/// Largest [`ControlCommand`] document.
pub const MAX_CONTROL_COMMAND: usize = 1024;

/// An operator's command to a running kiosk (`{prefix}/{id}/control`): exactly one of
/// `{"direction": "fr-en"}` (the direction of the next utterances) or `{"listening": false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum ControlCommand {
    Direction { direction: String },
    Listening { listening: bool },
}

impl ControlCommand {
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() > MAX_CONTROL_COMMAND {
            return Err(ProtocolError::TooLarge {
                len: bytes.len(),
                limit: MAX_CONTROL_COMMAND,
            });
        }
        serde_json::from_slice(bytes).map_err(|_| {
            malformed(
                "control command",
                "expected {\"direction\": \"<src>-<tgt>\"} or {\"listening\": true|false}",
            )
        })
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!("{s:?} must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {p:?} is not a number in 1..=65535"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(format!("{s:?}: expected scheme://host:port"));
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Job states reported on `jobs/status` (AWS IoT Jobs-like, plus TRIAL and ROLLED_BACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Queued,
    Downloading,
    Verifying,
    Installing,
    Trial,
    Succeeded,
    Failed,
    RolledBack,
    Canceled,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Canceled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Transfer {
    /// Numbered blocks over `blocks/data`, requested on `blocks/request`.
    Mqtt { block_size: u32 },
    /// A URL of the bundle folder (`file:///srv/bundles/v3/`); files are `base + path`.
    Url { base: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Install,
    Cancel,
}

/// A job for one device. `manifest` and `signatures` are the exact signed bytes, base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDocument {
    pub job_id: String,
    pub operation: Operation,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signatures: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// Checks a job id: 1..=64 of `[A-Za-z0-9_-]` (it becomes a folder name).
pub fn check_job_id(id: &str) -> Result<(), ProtocolError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(malformed(
            "job id",
            format!("{id:?}: 1..=64 of letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

impl JobDocument {
    pub fn install(job_id: &str, manifest: &[u8], signatures: &[u8], transfer: Transfer) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            job_id: job_id.into(),
            operation: Operation::Install,
            manifest: b64.encode(manifest),
            signatures: b64.encode(signatures),
            transfer: Some(transfer),
        }
    }

    /// Parses and checks a job document payload (size, fields, base64, block size).
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() > MAX_JOB_DOCUMENT {
            return Err(ProtocolError::TooLarge {
                len: payload.len(),
                limit: MAX_JOB_DOCUMENT,
            });
        }
        let doc: Self = serde_json::from_slice(payload)
            .map_err(|e| malformed("job document", e.to_string()))?;
        check_job_id(&doc.job_id)?;
        if doc.operation == Operation::Install {
            doc.manifest_bytes()?;
            doc.signature_bytes()?;
            match &doc.transfer {
                None => return Err(malformed("job document", "install without transfer")),
                Some(Transfer::Mqtt { block_size })
                    if !(1024..=MAX_BLOCK_SIZE).contains(block_size) =>
                {
                    return Err(malformed(
                        "job document",
                        format!("block_size {block_size} outside 1024..={MAX_BLOCK_SIZE}"),
                    ))
                }
                Some(Transfer::Url { base }) if base.len() > 1024 => {
                    return Err(malformed("job document", "URL longer than 1024"))
                }
                _ => {}
            }
        }
        Ok(doc)
    }

    pub fn manifest_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.manifest)
            .map_err(|e| malformed("job document", format!("manifest: {e}")))
    }

    pub fn signature_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.signatures)
            .map_err(|e| malformed("job document", format!("signatures: {e}")))
    }
}

/// One status update of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub job_id: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Bytes received / total, while downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<(u64, u64)>,
}

/// What runs in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub slot: String,
    pub name: String,
    pub version: u64,
    /// SHA-256 of the manifest bytes.
    pub digest: String,
}

/// The retained `state` message: what this device really runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// "online" or "offline" (the last will).
    pub status: String,
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub active: Option<SlotInfo>,
    #[serde(default)]
    pub highest_version: u64,
    #[serde(default)]
    pub last_job: Option<StatusReport>,
    /// True when the last job was refused as stale (expired metadata or replay).
    #[serde(default)]
    pub stale: bool,
    /// The last message refused before it could name a job (oversize or malformed job
    /// document, or a packet above [`MAX_INCOMING_PACKET`] that broke the connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedMessage>,
}

/// A message the device could not act on and could not answer through a job status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedMessage {
    /// The topic, or empty when the packet was too large to read its topic.
    pub topic: String,
    pub bytes: usize,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// The device asks for blocks of one file (all missing blocks, or a window of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    pub job_id: String,
    pub file: u32,
    pub blocks: Vec<u32>,
}

impl BlockRequest {
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() > MAX_CONTROL_MESSAGE {
            return Err(ProtocolError::TooLarge {
                len: payload.len(),
                limit: MAX_CONTROL_MESSAGE,
            });
        }
        let r: Self = serde_json::from_slice(payload)
            .map_err(|e| malformed("block request", e.to_string()))?;
        check_job_id(&r.job_id)?;
        Ok(r)
    }
}

/// One data-plane block: `b"TBLK"`, format version 1, job id length and bytes, file index,
/// block index, data length (big-endian u32), SHA-256 of the data, the data. The hash guards the
/// transport; the signed per-file SHA-256 in the manifest is what decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub job_id: String,
    pub file: u32,
    pub index: u32,
    pub data: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"TBLK";

impl Block {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + MAX_BLOCK_HEADER);
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.push(self.job_id.len() as u8);
        out.extend_from_slice(self.job_id.as_bytes());
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&Sha256::digest(&self.data));
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(p: &[u8]) -> Result<Self, ProtocolError> {
        let limit = MAX_BLOCK_SIZE as usize + MAX_BLOCK_HEADER;
        if p.len() > limit {
            return Err(ProtocolError::TooLarge {
                len: p.len(),
                limit,
            });
        }
        let err = |m: &str| malformed("block", m.to_string());
        if p.len() < 6 || &p[..4] != MAGIC || p[4] != 1 {
            return Err(err("bad magic or format version"));
        }
        let idlen = p[5] as usize;
        let mut at = 6;
        let take = |at: &mut usize, n: usize| -> Result<&[u8], ProtocolError> {
            let s = p.get(*at..*at + n).ok_or_else(|| err("truncated"))?;
            *at += n;
            Ok(s)
        };
        let job_id = std::str::from_utf8(take(&mut at, idlen)?)
            .map_err(|_| err("job id is not UTF-8"))?
            .to_string();
        check_job_id(&job_id)?;
        let u32_at = |at: &mut usize| -> Result<u32, ProtocolError> {
            Ok(u32::from_be_bytes(take(at, 4)?.try_into().unwrap()))
        };
        let file = u32_at(&mut at)?;
        let index = u32_at(&mut at)?;
        let len = u32_at(&mut at)? as usize;
        let hash = take(&mut at, 32)?.to_vec();
        let data = take(&mut at, len)?.to_vec();
        if at != p.len() {
            return Err(err("trailing bytes"));
        }
        if Sha256::digest(&data).as_slice() != hash.as_slice() {
            return Err(err("data does not match its hash"));
        }
        Ok(Self {
            job_id,
            file,
            index,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_commands_are_exactly_one_known_field() {
        assert_eq!(
            ControlCommand::parse(br#"{"direction":"fr-en"}"#).unwrap(),
            ControlCommand::Direction {
                direction: "fr-en".into()
            }
        );
        assert_eq!(
            ControlCommand::parse(br#"{"listening":false}"#).unwrap(),
            ControlCommand::Listening { listening: false }
        );
        for bad in [
            &br#"{"direction":"fr-en","listening":true}"#[..],
            br#"{"listening":"no"}"#,
            br#"{"reboot":true}"#,
            br#"[]"#,
            b"\xff\xfe",
            b"",
        ] {
            let e = ControlCommand::parse(bad).unwrap_err();
            assert!(e.to_string().contains("control command"), "{e}");
        }
        let big = format!(r#"{{"direction":"{}"}}"#, "x".repeat(MAX_CONTROL_COMMAND));
        assert!(matches!(
            ControlCommand::parse(big.as_bytes()),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtts://b.example:8884").unwrap(),
            BrokerUrl {
                tls: true,
                host: "b.example".into(),
                port: 8884
            }
        );
        assert_eq!(BrokerUrl::parse("mqtt://127.0.0.1").unwrap().port, 1883);
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://a/b:1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_round_trip_and_corruption() {
        let b = Block {
            job_id: "j-1".into(),
            file: 2,
            index: 7,
            data: vec![5; 1000],
        };
        let mut enc = b.encode();
        assert_eq!(Block::decode(&enc).unwrap(), b);
        let last = enc.len() - 1;
        enc[last] ^= 1;
        assert!(Block::decode(&enc).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Hostile payloads on every device-side topic never panic.
        #[test]
        fn payload_decoders_never_panic(p in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Block::decode(&p);
            let _ = JobDocument::decode(&p);
            let _ = BlockRequest::decode(&p);
        }

        #[test]
        fn mutated_blocks_are_rejected_or_identical(data in proptest::collection::vec(any::<u8>(), 0..300),
                                                   pos in any::<usize>(), bit in 0u8..8) {
            let b = Block { job_id: "job".into(), file: 0, index: 1, data };
            let mut enc = b.encode();
            let i = pos % enc.len();
            enc[i] ^= 1 << bit;
            // A flipped bit in data or hash is caught; in the indices it yields another block
            // whose data still matches its hash (the signed file hash catches misplacement).
            if let Ok(d) = Block::decode(&enc) { prop_assert_eq!(d.data, b.data); }
        }

        #[test]
        fn job_documents_round_trip(id in "[a-zA-Z0-9_-]{1,64}", m in proptest::collection::vec(any::<u8>(), 0..200)) {
            let doc = JobDocument::install(&id, &m, b"{}", Transfer::Mqtt { block_size: 4096 });
            let enc = serde_json::to_vec(&doc).unwrap();
            prop_assert_eq!(JobDocument::decode(&enc).unwrap(), doc);
        }
    }
}
