//! Model bundles: a folder of files described by a signed manifest.
//!
//! Layout of a bundle folder:
//! - `manifest.json`: name, version (monotonic u64), `compatible`, `min_runtime`, `expires`
//!   (Unix seconds) and for every file its relative path, size and SHA-256;
//! - `manifest.sig`: `{"signatures":[{"keyid":..., "sig": base64}]}`, Ed25519 signatures over
//!   the exact bytes of `manifest.json` (the bytes are never re-serialised before checking);
//! - the files themselves.
//!
//! As in TUF (theupdateframework.io, "signed metadata"), the signature check comes before the
//! manifest is parsed, every read is capped (metadata by [`MAX_MANIFEST_BYTES`], files by their
//! signed size), and several keys may be trusted at once so keys can be rotated.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Largest manifest accepted (metadata must stay small; an attacker may send endless bytes).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest signature file accepted.
pub const MAX_SIGNATURE_BYTES: usize = 8 * 1024;
/// Most files in one bundle.
pub const MAX_FILES: usize = 256;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BundleError {
    #[error("manifest is {0} bytes, above the {MAX_MANIFEST_BYTES}-byte limit")]
    ManifestTooLarge(usize),
    #[error("signature file is {0} bytes, above the {MAX_SIGNATURE_BYTES}-byte limit")]
    SignaturesTooLarge(usize),
    #[error("signature file is malformed: {0}")]
    BadSignatureFile(String),
    #[error("manifest is unsigned")]
    Unsigned,
    #[error("manifest is signed only by untrusted key(s) {0}")]
    UnknownKey(String),
    #[error("signature by key {0} does not match the manifest bytes")]
    BadSignature(String),
    #[error("manifest is malformed: {0}")]
    BadManifest(String),
    #[error("manifest expired at {expires} (now {now}, skew allowed {skew}s): stale metadata")]
    Expired { expires: u64, now: u64, skew: u64 },
    #[error("bundle is for {found:?}, this device is {expected:?}")]
    Incompatible { expected: String, found: String },
    #[error("bundle needs runtime {needed}, this is {ours}")]
    RuntimeTooOld { needed: String, ours: String },
    #[error("rollback refused: version {version} is not above the highest accepted {highest}")]
    Rollback { version: u64, highest: u64 },
    #[error("bundle is {total} bytes, above the {limit}-byte limit")]
    TooLarge { total: u64, limit: u64 },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("invalid key: {0}")]
    BadKey(String),
}

impl BundleError {
    fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, BundleError>;

/// A trusted Ed25519 public key, written `ed25519:<64 hex digits>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self> {
        let hex_part = s.strip_prefix("ed25519:").ok_or_else(|| {
            BundleError::BadKey(format!("{s:?} does not start with \"ed25519:\""))
        })?;
        let bytes: [u8; 32] = hex::decode(hex_part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BundleError::BadKey(format!("{s:?}: expected 64 hex digits")))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|e| BundleError::BadKey(format!("{s:?}: {e}")))?;
        if key.is_weak() {
            return Err(BundleError::BadKey(format!(
                "{s:?} is a weak (small-order) key"
            )));
        }
        Ok(Self(key))
    }

    /// Short id: the first 8 bytes of SHA-256 of the key, hex.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

/// An Ed25519 signing key (host side), stored as `ed25519-secret:<64 hex digits>`.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&rand::random::<
            [u8; 32],
        >()))
    }
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
    pub fn parse(s: &str) -> Result<Self> {
        let h = s.trim().strip_prefix("ed25519-secret:").ok_or_else(|| {
            BundleError::BadKey("secret key must start with \"ed25519-secret:\"".into())
        })?;
        let bytes: [u8; 32] = hex::decode(h)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BundleError::BadKey("secret key: expected 64 hex digits".into()))?;
        Ok(Self::from_seed(bytes))
    }
    pub fn to_secret_string(&self) -> String {
        format!("ed25519-secret:{}", hex::encode(self.0.to_bytes()))
    }
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
    pub fn sign(&self, message: &[u8]) -> SignatureEntry {
        SignatureEntry {
            keyid: self.public().key_id(),
            sig: base64::engine::general_purpose::STANDARD.encode(self.0.sign(message).to_bytes()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    pub signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the bundle, '/'-separated, no `..`.
    pub path: String,
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Monotonic version; the device refuses anything not above the highest it accepted.
    pub version: u64,
    /// Must equal the device's `ota.compatible`.
    pub compatible: String,
    /// Oldest runtime version ("major.minor.patch") able to run this bundle.
    pub min_runtime: String,
    /// Unix seconds after which the manifest is stale.
    pub expires: u64,
    pub files: Vec<FileEntry>,
}

/// Parses "a.b.c" (missing parts are 0).
pub fn parse_semver(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.trim().split('.');
    let mut p = [0u64; 3];
    for slot in &mut p {
        match it.next() {
            Some(x) => *slot = x.parse().ok()?,
            None => break,
        }
    }
    if it.next().is_some() {
        return None;
    }
    Some((p[0], p[1], p[2]))
}

/// Checks a bundle-relative path: non-empty, relative, only normal components, no backslash,
/// and no component equal to the manifest or signature file name (`manifest.sig/x` would need a
/// folder where the signature file lies, and an install could never create it).
pub fn check_relative_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() || p.len() > 255 {
        return Err("path is empty or longer than 255 bytes".into());
    }
    if p.contains('\\') || p.contains('\0') {
        return Err("path holds a backslash or NUL".into());
    }
    if p.split('/')
        .any(|s| s == MANIFEST_FILE || s == SIGNATURE_FILE)
    {
        return Err("path has a component named like the manifest or its signature".into());
    }
    for c in Path::new(p).components() {
        if !matches!(c, Component::Normal(_)) {
            return Err("path must be relative, without `.` or `..`".into());
        }
    }
    if p.split('/').any(|s| s.is_empty() || s.starts_with('.')) {
        return Err("path has an empty or hidden component".into());
    }
    Ok(())
}

impl Manifest {
    /// Parses manifest bytes with every structural rule (call only after the signature check).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(BundleError::ManifestTooLarge(bytes.len()));
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        let bad = |s: String| Err(BundleError::BadManifest(s));
        if m.name.is_empty() || m.name.len() > 128 {
            return bad("name is empty or longer than 128".into());
        }
        if m.version == 0 {
            return bad("version must be at least 1".into());
        }
        if m.compatible.is_empty() {
            return bad("compatible is empty".into());
        }
        if parse_semver(&m.min_runtime).is_none() {
            return bad(format!(
                "min_runtime {:?} is not major.minor.patch",
                m.min_runtime
            ));
        }
        if m.files.is_empty() || m.files.len() > MAX_FILES {
            return bad(format!("{} files (1..={MAX_FILES} allowed)", m.files.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &m.files {
            if let Err(e) = check_relative_path(&f.path) {
                return bad(format!("file {:?}: {e}", f.path));
            }
            if !seen.insert(f.path.to_ascii_lowercase()) {
                return bad(format!("file {:?} listed twice", f.path));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return bad(format!(
                    "file {:?}: sha256 must be 64 lower-case hex digits",
                    f.path
                ));
            }
        }
        // A file cannot also be a directory of another file.
        for f in &m.files {
            let prefix = format!("{}/", f.path.to_ascii_lowercase());
            if seen.iter().any(|s| s.starts_with(&prefix)) {
                return bad(format!("file {:?} is also a directory", f.path));
            }
        }
        Ok(m)
    }

    pub fn total_size(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.size))
    }

    /// SHA-256 of the exact manifest bytes: identifies a bundle.
    pub fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }
}

/// Verifies the signatures over the exact manifest bytes, then parses the manifest. At least one
/// signature must come from a trusted key and verify (strict Ed25519 verification).
pub fn verify_manifest(
    manifest: &[u8],
    signatures: &[u8],
    trusted: &[PublicKey],
) -> Result<Manifest> {
    if manifest.len() > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge(manifest.len()));
    }
    if signatures.len() > MAX_SIGNATURE_BYTES {
        return Err(BundleError::SignaturesTooLarge(signatures.len()));
    }
    let sigs: Signatures = serde_json::from_slice(signatures)
        .map_err(|e| BundleError::BadSignatureFile(e.to_string()))?;
    if sigs.signatures.is_empty() {
        return Err(BundleError::Unsigned);
    }
    let mut unknown = Vec::new();
    let mut bad = None;
    for entry in &sigs.signatures {
        let Some(key) = trusted.iter().find(|k| k.key_id() == entry.keyid) else {
            unknown.push(entry.keyid.clone());
            continue;
        };
        let ok = base64::engine::general_purpose::STANDARD
            .decode(&entry.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .map(|b| ed25519_dalek::Signature::from_bytes(&b))
            .is_some_and(|sig| {
                key.0.verify_strict(manifest, &sig).is_ok() && key.0.verify(manifest, &sig).is_ok()
            });
        if ok {
            return Manifest::parse(manifest);
        }
        bad = Some(entry.keyid.clone());
    }
    match bad {
        Some(id) => Err(BundleError::BadSignature(id)),
        None => Err(BundleError::UnknownKey(unknown.join(","))),
    }
}

/// What the device requires of a verified manifest.
#[derive(Debug, Clone)]
pub struct Policy {
    pub compatible: String,
    pub runtime_version: String,
    /// Unix seconds.
    pub now: u64,
    pub max_clock_skew_s: u64,
    /// Highest version accepted so far (anti-rollback).
    pub highest_version: u64,
    pub max_bundle_bytes: u64,
}

impl Policy {
    /// Checks expiry, compatibility, runtime version, anti-rollback and size.
    pub fn check(&self, m: &Manifest) -> Result<()> {
        if self.now > m.expires.saturating_add(self.max_clock_skew_s) {
            return Err(BundleError::Expired {
                expires: m.expires,
                now: self.now,
                skew: self.max_clock_skew_s,
            });
        }
        if m.compatible != self.compatible {
            return Err(BundleError::Incompatible {
                expected: self.compatible.clone(),
                found: m.compatible.clone(),
            });
        }
        let ours = parse_semver(&self.runtime_version).unwrap_or((0, 0, 0));
        if parse_semver(&m.min_runtime).is_none_or(|need| need > ours) {
            return Err(BundleError::RuntimeTooOld {
                needed: m.min_runtime.clone(),
                ours: self.runtime_version.clone(),
            });
        }
        if m.version <= self.highest_version {
            return Err(BundleError::Rollback {
                version: m.version,
                highest: self.highest_version,
            });
        }
        if m.total_size() > self.max_bundle_bytes {
            return Err(BundleError::TooLarge {
                total: m.total_size(),
                limit: self.max_bundle_bytes,
            });
        }
        Ok(())
    }
}

/// Opens a file for reading only if it is a regular file. The final component is not followed
/// (`O_NOFOLLOW`) and the open does not wait (`O_NONBLOCK`: a FIFO with no writer would block
/// a plain open forever); the type is then checked on the open descriptor (`fstat`), so nothing
/// can be swapped in between the check and the read. Devices, FIFOs, sockets, folders and
/// symlinks give an `InvalidInput` error.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = opts.open(path)?;
    let ty = f.metadata()?.file_type();
    if !ty.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({ty:?})"),
        ));
    }
    Ok(f)
}

/// Streams a file through SHA-256, reading at most `entry.size + 1` bytes, and checks size and
/// hash against the signed entry.
pub fn verify_file(path: &Path, entry: &FileEntry) -> Result<()> {
    let f = open_regular(path).map_err(|e| BundleError::io(path, e))?;
    let mut reader = f.take(entry.size.saturating_add(1));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n_total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| BundleError::io(path, e))?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        hasher.update(&buf[..n]);
    }
    if n_total != entry.size {
        return Err(BundleError::File {
            path: entry.path.clone(),
            message: if n_total > entry.size {
                format!("more bytes than the signed size {}", entry.size)
            } else {
                format!("{n_total} bytes, signed size {}", entry.size)
            },
        });
    }
    let got = hex::encode(hasher.finalize());
    if got != entry.sha256 {
        return Err(BundleError::File {
            path: entry.path.clone(),
            message: format!("sha256 {got} does not match the signed {}", entry.sha256),
        });
    }
    Ok(())
}

/// Verifies every file of a bundle folder against its (already verified) manifest.
pub fn verify_files(dir: &Path, m: &Manifest) -> Result<()> {
    for f in &m.files {
        verify_file(&dir.join(&f.path), f)?;
    }
    Ok(())
}

/// Reads and verifies a bundle folder: signature, manifest, every file.
pub fn verify_bundle_dir(
    dir: &Path,
    trusted: &[PublicKey],
) -> Result<(Manifest, Vec<u8>, Vec<u8>)> {
    let (mbytes, sbytes) = read_metadata(dir)?;
    let m = verify_manifest(&mbytes, &sbytes, trusted)?;
    verify_files(dir, &m)?;
    Ok((m, mbytes, sbytes))
}

/// Reads `manifest.json` and `manifest.sig`, capped by their limits.
pub fn read_metadata(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    Ok((
        read_capped(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES)?,
        read_capped(&dir.join(SIGNATURE_FILE), MAX_SIGNATURE_BYTES)?,
    ))
}

fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>> {
    let f = open_regular(path).map_err(|e| BundleError::io(path, e))?;
    let mut out = Vec::new();
    f.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BundleError::io(path, e))?;
    if out.len() > cap {
        return Err(if cap == MAX_MANIFEST_BYTES {
            BundleError::ManifestTooLarge(out.len())
        } else {
            BundleError::SignaturesTooLarge(out.len())
        });
    }
    Ok(out)
}

/// SHA-256 and size of a file (host side).
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = open_regular(path).map_err(|e| BundleError::io(path, e))?;
    let mut hasher = Sha256::new();
    let n = std::io::copy(&mut f, &mut hasher).map_err(|e| BundleError::io(path, e))?;
    Ok((n, hex::encode(hasher.finalize())))
}

/// What the host puts into a new manifest besides the file list.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub name: String,
    pub version: u64,
    pub compatible: String,
    pub min_runtime: String,
    pub expires: u64,
}

/// Host side: lists and hashes every file of `dir` (except the manifest and signature), writes
/// `manifest.json` and `manifest.sig` signed by every key given, and returns the manifest.
pub fn sign_bundle_dir(dir: &Path, info: &BundleInfo, keys: &[&SigningKey]) -> Result<Manifest> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let m = Manifest {
        name: info.name.clone(),
        version: info.version,
        compatible: info.compatible.clone(),
        min_runtime: info.min_runtime.clone(),
        expires: info.expires,
        files,
    };
    let bytes = serde_json::to_vec_pretty(&m).expect("manifest serialises");
    // Round-trip through the device's parser so the host never signs what devices refuse.
    Manifest::parse(&bytes)?;
    let sigs = Signatures {
        signatures: keys.iter().map(|k| k.sign(&bytes)).collect(),
    };
    let mpath = dir.join(MANIFEST_FILE);
    std::fs::write(&mpath, &bytes).map_err(|e| BundleError::io(&mpath, e))?;
    let spath = dir.join(SIGNATURE_FILE);
    std::fs::write(
        &spath,
        serde_json::to_vec(&sigs).expect("signatures serialise"),
    )
    .map_err(|e| BundleError::io(&spath, e))?;
    Ok(m)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| BundleError::io(dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| BundleError::io(dir, e))?;
        let p = ent.path();
        let ty = ent.file_type().map_err(|e| BundleError::io(&p, e))?;
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        if ty.is_dir() {
            collect_files(root, &p, out)?;
        } else if ty.is_file() {
            if rel == MANIFEST_FILE || rel == SIGNATURE_FILE {
                continue;
            }
            check_relative_path(&rel).map_err(|message| BundleError::File {
                path: rel.clone(),
                message,
            })?;
            let (size, sha256) = hash_file(&p)?;
            out.push(FileEntry {
                path: rel,
                size,
                sha256,
            });
        } else {
            return Err(BundleError::File {
                path: rel,
                message: "not a regular file (links are not bundled)".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: u64) -> BundleInfo {
        BundleInfo {
            name: "tiny".into(),
            version,
            compatible: "test-hw".into(),
            min_runtime: "0.1.0".into(),
            expires: 4_000_000_000,
        }
    }

    #[test]
    fn sign_and_verify_with_rotation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.bin"), b"hello").unwrap();
        std::fs::write(dir.path().join("sub/b.json"), b"{}").unwrap();
        let old = SigningKey::from_seed([1; 32]);
        let new = SigningKey::from_seed([2; 32]);
        sign_bundle_dir(dir.path(), &info(3), &[&old, &new]).unwrap();
        // Device trusting either key accepts.
        for trusted in [vec![old.public()], vec![new.public()]] {
            let (m, ..) = verify_bundle_dir(dir.path(), &trusted).unwrap();
            assert_eq!(m.files.len(), 2);
        }
        // After rotation the device trusts only the new key; bundles signed only by the old key fail.
        sign_bundle_dir(dir.path(), &info(4), &[&old]).unwrap();
        let e = verify_bundle_dir(dir.path(), &[new.public()]).unwrap_err();
        assert!(matches!(e, BundleError::UnknownKey(_)), "{e}");
    }

    #[test]
    fn policy_rules() {
        let m = Manifest::parse(
            br#"{"name":"x","version":5,"compatible":"hw","min_runtime":"0.2.0","expires":100,
                "files":[{"path":"a","size":1,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}"#,
        )
        .unwrap();
        let p = Policy {
            compatible: "hw".into(),
            runtime_version: "0.2.1".into(),
            now: 50,
            max_clock_skew_s: 10,
            highest_version: 4,
            max_bundle_bytes: 10,
        };
        p.check(&m).unwrap();
        let e = |p: Policy| p.check(&m).unwrap_err();
        assert!(matches!(
            e(Policy {
                now: 111,
                ..p.clone()
            }),
            BundleError::Expired { .. }
        ));
        assert!(matches!(
            e(Policy {
                compatible: "other".into(),
                ..p.clone()
            }),
            BundleError::Incompatible { .. }
        ));
        assert!(matches!(
            e(Policy {
                runtime_version: "0.1.9".into(),
                ..p.clone()
            }),
            BundleError::RuntimeTooOld { .. }
        ));
        assert!(matches!(
            e(Policy {
                highest_version: 5,
                ..p.clone()
            }),
            BundleError::Rollback { .. }
        ));
        assert!(matches!(
            e(Policy {
                max_bundle_bytes: 0,
                ..p
            }),
            BundleError::TooLarge { .. }
        ));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a//b",
            ".hidden",
            "a\\b",
            "",
            "manifest.json",
            "manifest.sig",
            "manifest.sig/x",
            "manifest.json/x",
            "model/manifest.sig",
            "a/manifest.json/b",
            "./a",
        ] {
            assert!(check_relative_path(p).is_err(), "{p:?} accepted");
        }
        check_relative_path("model/weights.safetensors").unwrap();
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = std::env::temp_dir().join(format!("tolk-open-regular-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A plain open of this FIFO would block forever (no writer); this returns at once.
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        std::fs::write(dir.join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        assert!(open_regular(&dir.join("link")).is_err());
        assert!(open_regular(&dir).is_err());
        open_regular(&dir.join("real")).unwrap();
        let entry = FileEntry {
            path: "fifo".into(),
            size: 1,
            sha256: "00".repeat(32),
        };
        assert!(verify_file(&fifo, &entry).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes as manifest and signature file never panic and are never accepted.
        #[test]
        fn manifest_parser_never_panics(m in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
                                        s in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let key = SigningKey::from_seed([7; 32]).public();
            proptest::prop_assert!(verify_manifest(&m, &s, &[key]).is_err());
            let _ = Manifest::parse(&m);
        }

        /// Any single flipped byte of a signed manifest is rejected.
        #[test]
        fn flipped_byte_is_rejected(pos in 0usize..10_000, bit in 0u8..8) {
            let key = SigningKey::from_seed([9; 32]);
            let m = Manifest { name: "n".into(), version: 2, compatible: "c".into(), min_runtime: "0.1.0".into(),
                expires: 9, files: vec![FileEntry { path: "f".into(), size: 3, sha256: "ab".repeat(32) }] };
            let mut bytes = serde_json::to_vec(&m).unwrap();
            let sig = serde_json::to_vec(&Signatures { signatures: vec![key.sign(&bytes)] }).unwrap();
            verify_manifest(&bytes, &sig, &[key.public()]).unwrap();
            let i = pos % bytes.len();
            bytes[i] ^= 1 << bit;
            proptest::prop_assert!(verify_manifest(&bytes, &sig, &[key.public()]).is_err());
        }
    }
}
