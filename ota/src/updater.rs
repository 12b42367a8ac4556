//! The device side of an update: job intake, staging, verification, A/B install, trial,
//! commit or revert, all persisted so that a crash at any point leaves the old or the new model
//! active (RAUC-style A/B slots; U-Boot bootcount-style bounded trial attempts).
//!
//! Layout under the slot root:
//! - `state.json`: the single commit point, replaced atomically (temp file, fsync, rename, fsync
//!   of the folder). It names the active slot, the highest accepted version (anti-rollback), a
//!   pending trial with its attempt count, and the last job's true outcome.
//! - `slots/a`, `slots/b`: complete bundle folders (manifest, signature, files). The active slot
//!   is never written; an install replaces the other one.
//! - `staging/<job>`: files being received; `staging/<job>.meta/`: block bitmaps for resuming.

use crate::fault::seam;
use crate::probe::HealthProbe;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tolk_config::bundle::{
    self, BundleError, Manifest, Policy, PublicKey, MANIFEST_FILE, SIGNATURE_FILE,
};
use tolk_config::fsutil::{atomic_write, free_bytes, remove_tree, sync_path, sync_tree};
use tolk_config::protocol::{
    Block, DeviceState, JobDocument, JobStatus, Operation, SlotInfo, StatusReport, Transfer,
};

/// Free space kept on top of a bundle's size.
const SPACE_MARGIN: u64 = 1 << 20;
/// Job ids remembered for idempotency.
const REMEMBERED_JOBS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state file: {message}")]
    State { path: PathBuf, message: String },
}

/// Why the files of a URL job could not be fetched; the message is the reason reported with
/// FAILED.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL {base:?}: {source}")]
    Url {
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error("URL scheme {0:?} is not supported (file:// only)")]
    Scheme(String),
    #[error("URL {0:?} is not a local path")]
    NotLocal(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: source has more bytes than the signed size {size}")]
    Longer { file: String, size: u64 },
    #[error(transparent)]
    Verify(#[from] BundleError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OtaError + '_ {
    move |source| OtaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The OTA policy of this device.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trusted: Vec<PublicKey>,
    pub compatible: String,
    pub runtime_version: String,
    pub max_clock_skew_s: u64,
    pub max_bundle_bytes: u64,
    pub trial_attempts: u32,
}

impl Settings {
    pub fn from_config(cfg: &tolk_config::Config) -> Self {
        Self {
            trusted: cfg.trusted_keys(),
            compatible: cfg.ota.compatible.to_string(),
            runtime_version: tolk_config::RUNTIME_VERSION.to_string(),
            max_clock_skew_s: cfg.ota.max_clock_skew_s as u64,
            max_bundle_bytes: cfg.ota.max_bundle_bytes,
            trial_attempts: cfg.ota.trial_attempts,
        }
    }
}

/// A bundle installed in the inactive slot, on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub job_id: String,
    pub info: SlotInfo,
    /// Trial attempts started (counted before each starts, so a crash counts).
    pub attempts: u32,
}

/// The persisted state (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub active: Option<SlotInfo>,
    pub highest_version: u64,
    /// Ids of the keys trusted when `highest_version` was last raised. The anti-rollback floor
    /// binds to them: after a full rotation (none of them trusted any more) the floor starts
    /// again from 0, the recovery path when a compromised key pushed a huge version
    /// (threat row 5 of deploy/README.md). An overlapping rotation keeps the floor.
    #[serde(default)]
    pub rollback_keys: Vec<String>,
    pub pending: Option<Pending>,
    pub last_job: Option<StatusReport>,
    pub stale: bool,
    /// Final reports of the last jobs whose manifest verified, for idempotency keyed on (job id,
    /// manifest digest): a replay changes nothing and is answered with the device's real state.
    pub finished_jobs: Vec<FinishedJob>,
}

/// A job that ended, with the SHA-256 of its verified manifest. Records written before the digest
/// was kept have an empty digest, which matches no document (such a job is verified again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedJob {
    #[serde(flatten)]
    pub report: StatusReport,
    #[serde(default)]
    pub digest: String,
}

/// A job being received.
#[derive(Debug)]
pub struct Job {
    pub job_id: String,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature_bytes: Vec<u8>,
    pub transfer: Transfer,
    dir: PathBuf,
    meta: PathBuf,
    /// Per file: one byte per block (1 = written), persisted in `meta` for resuming.
    have: Vec<Vec<u8>>,
    done: Vec<bool>,
    /// Blocks requested and not yet received.
    pub outstanding: usize,
    /// Per file: how many times its assembled bytes failed the signed hash (in memory only).
    mismatches: Vec<u32>,
}

/// How many times a file whose assembled bytes do not match the signed hash is fetched again
/// before the job fails; a publisher serving wrong bytes would otherwise be asked forever.
pub const MAX_FILE_REFETCHES: u32 = 3;

impl Job {
    pub fn block_size(&self) -> u64 {
        match self.transfer {
            Transfer::Mqtt { block_size } => block_size as u64,
            Transfer::Url { .. } => 1 << 20,
        }
    }
    fn blocks_of(&self, file: usize) -> u32 {
        self.manifest.files[file]
            .size
            .div_ceil(self.block_size())
            .max(1) as u32
    }
    pub fn is_complete(&self) -> bool {
        self.done.iter().all(|d| *d)
    }
    /// Up to `max` missing blocks, grouped by file: `(file, blocks)`.
    pub fn missing(&self, max: usize) -> Vec<(u32, Vec<u32>)> {
        let mut out = Vec::new();
        let mut n = 0;
        for (f, have) in self.have.iter().enumerate() {
            if self.done[f] {
                continue;
            }
            let miss: Vec<u32> = (0..have.len() as u32)
                .filter(|&i| have[i as usize] == 0)
                .take(max - n)
                .collect();
            n += miss.len();
            if !miss.is_empty() {
                out.push((f as u32, miss));
            }
            if n >= max {
                break;
            }
        }
        out
    }
    pub fn received_bytes(&self) -> u64 {
        let bs = self.block_size();
        self.have
            .iter()
            .enumerate()
            .map(|(f, h)| {
                let size = self.manifest.files[f].size;
                h.iter()
                    .enumerate()
                    .filter(|(_, b)| **b != 0)
                    .map(|(i, _)| (size - (i as u64 * bs).min(size)).min(bs))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// What happened to a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    Written,
    Duplicate,
    Ignored(String),
    /// The job failed while handling this block (reported FAILED with this reason).
    Failed(String),
}

pub struct Updater {
    root: PathBuf,
    settings: Settings,
    probe: Box<dyn HealthProbe>,
    clock: Box<dyn Fn() -> u64 + Send>,
    state: State,
    job: Option<Job>,
    outbox: Vec<StatusReport>,
}

fn report(
    job_id: &str,
    status: JobStatus,
    version: Option<u64>,
    reason: impl Into<String>,
) -> StatusReport {
    StatusReport {
        job_id: job_id.to_string(),
        status,
        version,
        reason: reason.into(),
        progress: None,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Updater {
    /// Opens (creating if needed) the slot root and reads the persisted state. Call
    /// [`Updater::recover`] next.
    pub fn open(
        root: &Path,
        settings: Settings,
        probe: Box<dyn HealthProbe>,
    ) -> Result<Self, OtaError> {
        for d in [root.to_path_buf(), root.join("slots"), root.join("staging")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let path = root.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OtaError::State {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            settings,
            probe,
            clock: Box::new(unix_now),
            state,
            job: None,
            outbox: Vec::new(),
        })
    }

    /// Replaces the wall clock (tests of expiry and clock policy).
    pub fn set_clock(&mut self, clock: Box<dyn Fn() -> u64 + Send>) {
        self.clock = clock;
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn job(&self) -> Option<&Job> {
        self.job.as_ref()
    }
    pub fn job_mut(&mut self) -> Option<&mut Job> {
        self.job.as_mut()
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn slot_dir(&self, slot: &str) -> PathBuf {
        self.root.join("slots").join(slot)
    }
    /// The active model's folder, if any.
    pub fn active_dir(&self) -> Option<PathBuf> {
        self.state.active.as_ref().map(|a| self.slot_dir(&a.slot))
    }
    /// Status reports produced since the last call.
    pub fn take_reports(&mut self) -> Vec<StatusReport> {
        std::mem::take(&mut self.outbox)
    }

    /// The retained `state` message.
    pub fn device_state(&self) -> DeviceState {
        DeviceState {
            status: "online".into(),
            runtime: self.settings.runtime_version.clone(),
            active: self.state.active.clone(),
            highest_version: self.state.highest_version,
            last_job: self.state.last_job.clone(),
            stale: self.state.stale,
            refused: None,
        }
    }

    fn save(&self) -> Result<(), OtaError> {
        let path = self.root.join("state.json");
        let bytes = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        atomic_write(&path, &bytes).map_err(io(&path))
    }

    fn emit(&mut self, r: StatusReport) {
        tracing::info!(job = %r.job_id, status = ?r.status, reason = %r.reason, "job status");
        self.outbox.push(r);
    }

    /// Records a terminal outcome durably and reports it. `digest` is the SHA-256 of the job's
    /// verified manifest; without one (the document never verified) the outcome is reported and
    /// kept as `last_job` but not remembered for idempotency, so an unsigned document cannot
    /// squat the id of a genuine job.
    fn finish(&mut self, r: StatusReport, digest: Option<String>) -> Result<(), OtaError> {
        if let Some(digest) = digest {
            self.state
                .finished_jobs
                .retain(|j| !(j.report.job_id == r.job_id && j.digest == digest));
            self.state.finished_jobs.push(FinishedJob {
                report: r.clone(),
                digest,
            });
            let n = self.state.finished_jobs.len();
            if n > REMEMBERED_JOBS {
                self.state.finished_jobs.drain(..n - REMEMBERED_JOBS);
            }
        }
        self.state.last_job = Some(r.clone());
        self.save()?;
        self.emit(r);
        Ok(())
    }

    /// After a (re)start: a trial that already used all its attempts is abandoned (the model
    /// crashed the process each time), stale staging of forgotten jobs is removed. Returns true
    /// when a trial is pending and should be resumed with [`Updater::run_trial`].
    pub fn recover(&mut self) -> Result<bool, OtaError> {
        if let Some(p) = self.state.pending.clone() {
            if p.attempts >= self.settings.trial_attempts {
                self.state.pending = None;
                let kept = self
                    .state
                    .active
                    .as_ref()
                    .map(|a| format!("version {} stays active", a.version))
                    .unwrap_or_else(|| "no model is active".into());
                self.finish(
                    report(
                        &p.job_id,
                        JobStatus::RolledBack,
                        Some(p.info.version),
                        format!(
                            "crash loop: the new model did not survive {} trial attempts; {kept}",
                            p.attempts
                        ),
                    ),
                    Some(p.info.digest.clone()),
                )?;
                let _ = remove_tree(&self.slot_dir(&p.info.slot));
                return Ok(false);
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn inactive_slot(&self) -> &'static str {
        match self.state.active.as_ref().map(|a| a.slot.as_str()) {
            Some("a") => "b",
            _ => "a",
        }
    }

    /// Takes a job document. Install jobs are verified (signature, expiry, compatibility,
    /// runtime, anti-rollback, size, free space) before any byte is written; the transfer then
    /// starts (or resumes from what staging holds). Duplicates are harmless.
    pub fn handle_job(&mut self, doc: &JobDocument) -> Result<(), OtaError> {
        if doc.operation == Operation::Cancel {
            return self.cancel(&doc.job_id);
        }
        let (Ok(mbytes), Ok(sbytes)) = (doc.manifest_bytes(), doc.signature_bytes()) else {
            return self.finish(
                report(
                    &doc.job_id,
                    JobStatus::Failed,
                    None,
                    "job document: bad base64",
                ),
                None,
            );
        };
        let digest = Manifest::digest(&mbytes);
        if let Some(done) = self
            .state
            .finished_jobs
            .iter()
            .find(|j| j.report.job_id == doc.job_id && j.digest == digest)
        {
            // Replayed or duplicate job: change nothing, answer with what is true now.
            let r = self.replay_report(&done.report.clone(), &digest);
            self.emit(r);
            tracing::info!(job = %doc.job_id, "job already finished; ignored");
            return Ok(());
        }
        if let Some(j) = &self.job {
            if j.job_id == doc.job_id && Manifest::digest(&j.manifest_bytes) == digest {
                return Ok(());
            }
            let busy = j.job_id.clone();
            self.emit(report(
                &doc.job_id,
                JobStatus::Failed,
                None,
                format!("busy: job {busy} is in progress (one job at a time); send it again later"),
            ));
            return Ok(());
        }
        if let Some(p) = &self.state.pending {
            let busy = p.job_id.clone();
            self.emit(report(
                &doc.job_id,
                JobStatus::Failed,
                None,
                format!("busy: job {busy} is on trial"),
            ));
            return Ok(());
        }
        let manifest = match self.check_manifest(&mbytes, &sbytes) {
            Ok(m) => m,
            Err(e) => {
                self.state.stale = matches!(e, BundleError::Expired { .. });
                let version = Manifest::parse(&mbytes).ok().map(|m| m.version);
                // Refusals are not remembered: the same id may come again with a document
                // that verifies, and a refused one costs only its verification to refuse again.
                return self.finish(
                    report(&doc.job_id, JobStatus::Failed, version, e.to_string()),
                    None,
                );
            }
        };
        self.state.stale = false;
        let transfer = doc
            .transfer
            .clone()
            .expect("decoded install jobs carry a transfer");
        self.emit(report(
            &doc.job_id,
            JobStatus::Queued,
            Some(manifest.version),
            "",
        ));
        let version = manifest.version;
        let job = match self.open_staging(&doc.job_id, manifest, mbytes, sbytes, transfer) {
            Ok(job) => job,
            Err(e) => {
                // A per-job I/O error fails the job; the agent keeps serving.
                self.discard_staging(&doc.job_id);
                return self.finish(
                    report(&doc.job_id, JobStatus::Failed, Some(version), e.to_string()),
                    Some(digest),
                );
            }
        };
        let need = job
            .manifest
            .total_size()
            .saturating_sub(job.received_bytes())
            + SPACE_MARGIN;
        let free = free_bytes(&self.root.join("staging")).unwrap_or(u64::MAX);
        if free < need {
            self.discard_staging(&doc.job_id);
            return self.finish(
                report(
                    &doc.job_id,
                    JobStatus::Failed,
                    Some(version),
                    format!("not enough free space: need {need} bytes, {free} available"),
                ),
                Some(digest),
            );
        }
        self.job = Some(job);
        seam("accepted");
        self.emit(report(
            &doc.job_id,
            JobStatus::Downloading,
            Some(version),
            "",
        ));
        Ok(())
    }

    /// The answer to a replay of a finished job: the device's state now, not the old report. A job
    /// that succeeded is SUCCEEDED only while its manifest is still the active one.
    fn replay_report(&self, done: &StatusReport, digest: &str) -> StatusReport {
        let active = self.state.active.as_ref();
        let now = active
            .map(|a| format!("active: {} version {} (slot {})", a.name, a.version, a.slot))
            .unwrap_or_else(|| "no model is active".into());
        if active.is_some_and(|a| a.digest == digest) {
            return report(
                &done.job_id,
                JobStatus::Succeeded,
                done.version,
                format!("already installed; {now}"),
            );
        }
        let status = if done.status == JobStatus::Succeeded {
            // Installed once, no longer active (reverted or replaced since).
            JobStatus::Failed
        } else {
            done.status
        };
        report(
            &done.job_id,
            status,
            done.version,
            format!(
                "replay of a finished job ({:?}: {}); nothing changed; {now}",
                done.status, done.reason
            ),
        )
    }

    /// The anti-rollback floor in force under the currently trusted keys (see
    /// [`State::rollback_keys`]).
    pub fn rollback_floor(&self) -> u64 {
        let trusted: Vec<String> = self.settings.trusted.iter().map(|k| k.key_id()).collect();
        let rotated_out = !self.state.rollback_keys.is_empty()
            && !self.state.rollback_keys.iter().any(|k| trusted.contains(k));
        if rotated_out {
            0
        } else {
            self.state.highest_version
        }
    }

    fn check_manifest(&self, mbytes: &[u8], sbytes: &[u8]) -> Result<Manifest, BundleError> {
        let m = bundle::verify_manifest(mbytes, sbytes, &self.settings.trusted)?;
        Policy {
            compatible: self.settings.compatible.clone(),
            runtime_version: self.settings.runtime_version.clone(),
            now: (self.clock)(),
            max_clock_skew_s: self.settings.max_clock_skew_s,
            highest_version: self.rollback_floor(),
            max_bundle_bytes: self.settings.max_bundle_bytes,
        }
        .check(&m)?;
        Ok(m)
    }

    fn staging_paths(&self, job_id: &str) -> (PathBuf, PathBuf) {
        let s = self.root.join("staging");
        (s.join(job_id), s.join(format!("{job_id}.meta")))
    }

    fn discard_staging(&mut self, job_id: &str) {
        let (dir, meta) = self.staging_paths(job_id);
        let _ = remove_tree(&dir);
        let _ = remove_tree(&meta);
    }

    /// Creates the staging folder, or resumes it when it holds the same manifest.
    fn open_staging(
        &mut self,
        job_id: &str,
        manifest: Manifest,
        mbytes: Vec<u8>,
        sbytes: Vec<u8>,
        transfer: Transfer,
    ) -> Result<Job, OtaError> {
        let (dir, meta) = self.staging_paths(job_id);
        let resumable = std::fs::read(dir.join(MANIFEST_FILE)).is_ok_and(|b| b == mbytes)
            && std::fs::read(meta.join("transfer.json"))
                .is_ok_and(|b| b == serde_json::to_vec(&transfer).unwrap());
        if !resumable {
            // One job at a time: anything else in staging belongs to a forgotten job.
            let staging = self.root.join("staging");
            remove_tree(&staging).map_err(io(&staging))?;
            std::fs::create_dir_all(&staging).map_err(io(&staging))?;
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            std::fs::create_dir_all(&meta).map_err(io(&meta))?;
            let t = meta.join("transfer.json");
            std::fs::write(&t, serde_json::to_vec(&transfer).unwrap()).map_err(io(&t))?;
            let s = dir.join(SIGNATURE_FILE);
            std::fs::write(&s, &sbytes).map_err(io(&s))?;
            // The manifest last: its presence marks a resumable staging folder.
            let m = dir.join(MANIFEST_FILE);
            std::fs::write(&m, &mbytes).map_err(io(&m))?;
        }
        let mut job = Job {
            job_id: job_id.to_string(),
            manifest,
            manifest_bytes: mbytes,
            signature_bytes: sbytes,
            transfer,
            dir,
            meta,
            have: Vec::new(),
            done: Vec::new(),
            outstanding: 0,
            mismatches: Vec::new(),
        };
        for f in 0..job.manifest.files.len() {
            let n = job.blocks_of(f) as usize;
            let saved = std::fs::read(job.meta.join(format!("{f}.blocks"))).unwrap_or_default();
            let have = if resumable && saved.len() == n {
                saved
            } else {
                vec![0; n]
            };
            job.have.push(have);
            let entry = job.manifest.files[f].clone();
            let done = resumable
                && job.meta.join(format!("{f}.done")).exists()
                && bundle::verify_file(&job.dir.join(&entry.path), &entry).is_ok();
            job.done.push(done);
        }
        Ok(job)
    }

    /// Writes one data-plane block (idempotent: a block already held is a no-op). Blocks of
    /// other jobs, out-of-range indices and wrong lengths are ignored. When a file's last block
    /// arrives, the file is checked against its signed size and hash; a mismatch clears it so
    /// its blocks are requested again.
    ///
    /// Any I/O error while writing (EIO, ENOSPC, a path that cannot be created) and a file that
    /// fails its hash more than [`MAX_FILE_REFETCHES`] times fail the job with the reason; only
    /// an error recording that outcome is returned.
    pub fn handle_block(&mut self, b: &Block) -> Result<BlockOutcome, OtaError> {
        match self.write_block(b) {
            Ok(BlockOutcome::Failed(reason)) => {
                self.fail_job(reason.clone())?;
                Ok(BlockOutcome::Failed(reason))
            }
            Ok(o) => Ok(o),
            Err(e) => {
                let reason = e.to_string();
                self.fail_job(reason.clone())?;
                Ok(BlockOutcome::Failed(reason))
            }
        }
    }

    /// Ends the job in progress as FAILED and frees its staging.
    fn fail_job(&mut self, reason: String) -> Result<(), OtaError> {
        let Some(job) = self.job.take() else {
            return Ok(());
        };
        self.discard_staging(&job.job_id);
        self.finish(
            report(
                &job.job_id,
                JobStatus::Failed,
                Some(job.manifest.version),
                reason,
            ),
            Some(Manifest::digest(&job.manifest_bytes)),
        )
    }

    fn write_block(&mut self, b: &Block) -> Result<BlockOutcome, OtaError> {
        let Some(job) = self.job.as_mut() else {
            return Ok(BlockOutcome::Ignored("no job in progress".into()));
        };
        if b.job_id != job.job_id {
            return Ok(BlockOutcome::Ignored(format!("block of job {}", b.job_id)));
        }
        let f = b.file as usize;
        if f >= job.manifest.files.len() {
            return Ok(BlockOutcome::Ignored(format!(
                "file index {} out of range",
                b.file
            )));
        }
        let nblocks = job.blocks_of(f);
        if b.index >= nblocks {
            return Ok(BlockOutcome::Ignored(format!(
                "block {} beyond {nblocks}",
                b.index
            )));
        }
        let entry = job.manifest.files[f].clone();
        let bs = job.block_size();
        let offset = b.index as u64 * bs;
        let expect = (entry.size - offset.min(entry.size)).min(bs);
        if b.data.len() as u64 != expect {
            return Ok(BlockOutcome::Ignored(format!(
                "block {} of {} has {} bytes, expected {expect}",
                b.index,
                entry.path,
                b.data.len()
            )));
        }
        job.outstanding = job.outstanding.saturating_sub(1);
        if job.done[f] || job.have[f][b.index as usize] != 0 {
            return Ok(BlockOutcome::Duplicate);
        }
        let path = job.dir.join(&entry.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all_at(&b.data, offset).map_err(io(&path))?;
        // Never longer than signed, whatever was there before.
        if file.metadata().map_err(io(&path))?.len() > entry.size {
            file.set_len(entry.size).map_err(io(&path))?;
        }
        job.have[f][b.index as usize] = 1;
        let bm = job.meta.join(format!("{f}.blocks"));
        std::fs::write(&bm, &job.have[f]).map_err(io(&bm))?;
        if job.have[f].iter().all(|h| *h != 0) {
            file.set_len(entry.size).map_err(io(&path))?;
            match bundle::verify_file(&path, &entry) {
                Ok(()) => {
                    job.done[f] = true;
                    let d = job.meta.join(format!("{f}.done"));
                    std::fs::write(&d, b"").map_err(io(&d))?;
                }
                Err(e) => {
                    if job.mismatches.len() < job.done.len() {
                        job.mismatches.resize(job.done.len(), 0);
                    }
                    job.mismatches[f] += 1;
                    if job.mismatches[f] > MAX_FILE_REFETCHES {
                        return Ok(BlockOutcome::Failed(format!(
                            "{}: assembled bytes failed the signed hash {} times: {e}",
                            entry.path, job.mismatches[f]
                        )));
                    }
                    tracing::warn!(file = %entry.path, error = %e, "assembled file does not verify; fetching it again");
                    job.have[f].iter_mut().for_each(|h| *h = 0);
                    std::fs::write(&bm, &job.have[f]).map_err(io(&bm))?;
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(BlockOutcome::Written)
    }

    /// Fetches every missing file of a URL job (`file://` URLs), each read capped by its signed
    /// size. A source longer than signed, shorter, or with another hash fails the job.
    pub fn fetch_url(&mut self) -> Result<(), OtaError> {
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        let Transfer::Url { base } = job.transfer.clone() else {
            return Ok(());
        };
        let job_id = job.job_id.clone();
        let version = job.manifest.version;
        let digest = Manifest::digest(&job.manifest_bytes);
        let result = (|| -> Result<(), FetchError> {
            let base_url = url::Url::parse(&base).map_err(|source| FetchError::Url {
                base: base.clone(),
                source,
            })?;
            if base_url.scheme() != "file" {
                return Err(FetchError::Scheme(base_url.scheme().to_string()));
            }
            let base_dir = base_url
                .to_file_path()
                .map_err(|()| FetchError::NotLocal(base.clone()))?;
            let fio = |path: &Path| {
                let path = path.to_path_buf();
                move |source| FetchError::Io { path, source }
            };
            for f in 0..job.manifest.files.len() {
                if job.done[f] {
                    continue;
                }
                let entry = job.manifest.files[f].clone();
                let src = base_dir.join(&entry.path);
                let dst = job.dir.join(&entry.path);
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(fio(parent))?;
                }
                let input = bundle::open_regular(&src).map_err(fio(&src))?;
                let mut out = std::fs::File::create(&dst).map_err(fio(&dst))?;
                // Cap by the signed size (+1 to notice a longer source).
                let n =
                    std::io::copy(&mut input.take(entry.size + 1), &mut out).map_err(fio(&dst))?;
                out.flush().map_err(fio(&dst))?;
                if n > entry.size {
                    return Err(FetchError::Longer {
                        file: entry.path.clone(),
                        size: entry.size,
                    });
                }
                bundle::verify_file(&dst, &entry)?;
                job.done[f] = true;
                job.have[f].iter_mut().for_each(|h| *h = 1);
                let d = job.meta.join(format!("{f}.done"));
                std::fs::write(&d, b"").map_err(fio(&d))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.job = None;
            self.discard_staging(&job_id);
            return self.finish(
                report(&job_id, JobStatus::Failed, Some(version), e.to_string()),
                Some(digest),
            );
        }
        Ok(())
    }

    /// Cancels the job in progress (before it reaches the slots). Idempotent.
    pub fn cancel(&mut self, job_id: &str) -> Result<(), OtaError> {
        if self.job.as_ref().is_some_and(|j| j.job_id == job_id) {
            let v = self.job.as_ref().map(|j| j.manifest.version);
            let digest = self
                .job
                .as_ref()
                .map(|j| Manifest::digest(&j.manifest_bytes));
            self.job = None;
            self.discard_staging(job_id);
            return self.finish(
                report(job_id, JobStatus::Canceled, v, "canceled by request"),
                digest,
            );
        }
        if self
            .state
            .pending
            .as_ref()
            .is_some_and(|p| p.job_id == job_id)
        {
            self.emit(report(
                job_id,
                JobStatus::Trial,
                None,
                "cannot cancel: already on trial",
            ));
        }
        Ok(())
    }

    /// When every file is staged: verify all of them again, move the staging folder into the
    /// inactive slot (fsync of files and folders), record the pending trial, and run it.
    pub fn install_if_complete(&mut self) -> Result<bool, OtaError> {
        if !self.job.as_ref().is_some_and(|j| j.is_complete()) {
            return Ok(false);
        }
        let job = self.job.take().expect("checked");
        let version = job.manifest.version;
        seam("staged");
        self.emit(report(&job.job_id, JobStatus::Verifying, Some(version), ""));
        // The signature again, over the staged bytes, then every file.
        let verified = bundle::read_metadata(&job.dir)
            .and_then(|(m, s)| {
                if m != job.manifest_bytes {
                    return Err(BundleError::BadManifest("staged manifest changed".into()));
                }
                bundle::verify_manifest(&m, &s, &self.settings.trusted)
            })
            .and_then(|m| bundle::verify_files(&job.dir, &m));
        if let Err(e) = verified {
            self.discard_staging(&job.job_id);
            self.finish(
                report(&job.job_id, JobStatus::Failed, Some(version), e.to_string()),
                Some(Manifest::digest(&job.manifest_bytes)),
            )?;
            return Ok(true);
        }
        seam("verified");
        self.emit(report(
            &job.job_id,
            JobStatus::Installing,
            Some(version),
            "",
        ));
        let slot = self.inactive_slot();
        let slot_dir = self.slot_dir(slot);
        let moved = (|| -> Result<(), OtaError> {
            remove_tree(&slot_dir).map_err(io(&slot_dir))?;
            sync_path(&self.root.join("slots")).map_err(io(&slot_dir))?;
            sync_tree(&job.dir).map_err(io(&job.dir))?;
            std::fs::rename(&job.dir, &slot_dir).map_err(io(&slot_dir))?;
            sync_path(&self.root.join("slots")).map_err(io(&slot_dir))?;
            sync_path(&self.root.join("staging")).map_err(io(&slot_dir))?;
            Ok(())
        })();
        if let Err(e) = moved {
            // Nothing points at the inactive slot yet: free it and fail the job.
            let _ = remove_tree(&slot_dir);
            self.discard_staging(&job.job_id);
            self.finish(
                report(&job.job_id, JobStatus::Failed, Some(version), e.to_string()),
                Some(Manifest::digest(&job.manifest_bytes)),
            )?;
            return Ok(true);
        }
        self.state.pending = Some(Pending {
            job_id: job.job_id.clone(),
            info: SlotInfo {
                slot: slot.to_string(),
                name: job.manifest.name.clone(),
                version,
                digest: Manifest::digest(&job.manifest_bytes),
            },
            attempts: 0,
        });
        self.save()?;
        let _ = remove_tree(&job.meta);
        seam("installed");
        self.run_trial()?;
        Ok(true)
    }

    /// Runs the health probe on the pending slot (the attempt is counted durably first), then
    /// commits (one atomic state write: active slot, highest version, outcome) or reverts.
    pub fn run_trial(&mut self) -> Result<(), OtaError> {
        let Some(mut p) = self.state.pending.clone() else {
            return Ok(());
        };
        p.attempts += 1;
        self.state.pending = Some(p.clone());
        self.save()?;
        self.emit(report(
            &p.job_id,
            JobStatus::Trial,
            Some(p.info.version),
            format!("attempt {} of {}", p.attempts, self.settings.trial_attempts),
        ));
        seam("trial");
        let slot_dir = self.slot_dir(&p.info.slot);
        seam("probe");
        let outcome = self.probe.probe(&slot_dir);
        match outcome {
            Ok(r) => {
                self.state.active = Some(p.info.clone());
                self.state.highest_version = self.rollback_floor().max(p.info.version);
                self.state.rollback_keys =
                    self.settings.trusted.iter().map(|k| k.key_id()).collect();
                self.state.pending = None;
                self.finish(
                    report(
                        &p.job_id,
                        JobStatus::Succeeded,
                        Some(p.info.version),
                        r.summary,
                    ),
                    Some(p.info.digest.clone()),
                )?;
                seam("committed");
            }
            Err(e) => {
                self.state.pending = None;
                self.finish(
                    report(
                        &p.job_id,
                        JobStatus::Failed,
                        Some(p.info.version),
                        e.to_string(),
                    ),
                    Some(p.info.digest.clone()),
                )?;
                let _ = remove_tree(&slot_dir);
            }
        }
        Ok(())
    }

    /// Verifies the active slot's signature and every file.
    pub fn verify_active(&self) -> Result<Option<Manifest>, BundleError> {
        match self.active_dir() {
            None => Ok(None),
            Some(dir) => {
                bundle::verify_bundle_dir(&dir, &self.settings.trusted).map(|(m, ..)| Some(m))
            }
        }
    }

    /// Installs a bundle folder through the `file://` path (local installs, tests).
    pub fn install_dir(&mut self, job_id: &str, bundle_dir: &Path) -> Result<(), OtaError> {
        let (m, s) = match bundle::read_metadata(bundle_dir) {
            Ok(x) => x,
            Err(e) => {
                return self.finish(report(job_id, JobStatus::Failed, None, e.to_string()), None)
            }
        };
        let abs = std::fs::canonicalize(bundle_dir).map_err(io(bundle_dir))?;
        let base = url::Url::from_directory_path(&abs)
            .map_err(|_| io(bundle_dir)(std::io::Error::other("not an absolute path")))?
            .to_string();
        let doc = JobDocument::install(job_id, &m, &s, Transfer::Url { base });
        self.handle_job(&doc)?;
        self.fetch_url()?;
        self.install_if_complete()?;
        Ok(())
    }
}
