//! `tolk-train bundle sign`: writes `manifest.json` and `manifest.sig` for a bundle folder.

use std::path::Path;
use tolk_config::bundle::{sign_bundle_dir, BundleError, BundleInfo, Manifest, SigningKey};

/// Reads a secret key file written by `tolk ota keygen`.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(|e| BundleError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    SigningKey::parse(&text)
}

/// Signs `dir` with every key file given (several keys during a rotation).
pub fn sign(dir: &Path, info: &BundleInfo, key_files: &[&Path]) -> Result<Manifest, BundleError> {
    let keys = key_files
        .iter()
        .map(|p| read_signing_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&SigningKey> = keys.iter().collect();
    sign_bundle_dir(dir, info, &refs)
}
