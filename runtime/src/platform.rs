//! What `tolk doctor` reads about the machine it runs on: the Jetson's L4T release and JetPack,
//! the CUDA toolkit, the libtorch this process loaded, memory (shared by CPU and GPU on a
//! Jetson), the power mode, and whether a translator fits in memory with its KV cache.
//!
//! Every file is read under a root folder (`/` on a device; a fixture folder in tests), and
//! every parser takes text, so each can be tested without a Jetson.

use std::path::{Path, PathBuf};

/// An L4T release, from the first line of `/etc/nv_tegra_release`, e.g.
/// `# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4tRelease {
    pub major: u32,
    /// The REVISION field, e.g. "4.3".
    pub revision: String,
    pub board: String,
}

impl L4tRelease {
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().next()?.trim().trim_start_matches('#').trim();
        let major = line
            .strip_prefix('R')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let field = |name: &str| {
            line.split(',')
                .find_map(|f| f.trim().strip_prefix(name).map(|v| v.trim().to_string()))
        };
        Some(Self {
            major,
            revision: field("REVISION:")?,
            board: field("BOARD:").unwrap_or_default(),
        })
    }

    /// The JetPack release that ships this L4T (NVIDIA's JetPack archive), when known.
    pub fn jetpack(&self) -> Option<&'static str> {
        let minor = |r: &str| r.split('.').next().and_then(|m| m.parse::<u32>().ok());
        Some(match (self.major, self.revision.as_str()) {
            (36, "4.4") => "6.2.1",
            (36, "4.3") => "6.2",
            (36, r) if minor(r) == Some(4) => "6.1",
            (36, r) if minor(r) == Some(3) => "6.0",
            (36, r) if minor(r) == Some(2) => "6.0 DP",
            (35, r) if minor(r) == Some(6) => "5.1.4",
            (35, r) if minor(r) == Some(5) => "5.1.3",
            (35, r) if minor(r) == Some(4) => "5.1.2",
            (35, _) => "5.x",
            _ => return None,
        })
    }
}

/// The CUDA toolkit version under `root`: `usr/local/cuda/version.json` (CUDA 11.1+), else the
/// older `version.txt` ("CUDA Version 10.2.300").
pub fn cuda_toolkit_version(root: &Path) -> Option<String> {
    let dir = root.join("usr/local/cuda");
    if let Ok(text) = std::fs::read_to_string(dir.join("version.json")) {
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        return v["cuda"]["version"].as_str().map(str::to_string);
    }
    let text = std::fs::read_to_string(dir.join("version.txt")).ok()?;
    text.split_whitespace().last().map(str::to_string)
}

/// Memory in KiB from `/proc/meminfo` text: (MemTotal, MemAvailable).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The power mode from `nvpmodel -q` output ("NV Power Mode: 15W" then the mode id).
pub fn parse_nvpmodel(text: &str) -> Option<(String, Option<u32>)> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let name = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("NV Power Mode:"))?
        .trim()
        .to_string();
    let id = lines.next().and_then(|l| l.parse().ok());
    Some((name, id))
}

/// The libtorch this process mapped (from `/proc/self/maps`) and its version (`version.py`
/// beside a wheel's `lib/`, else libtorch's `build-version`).
pub fn loaded_libtorch() -> Option<(PathBuf, Option<String>)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .map(PathBuf::from)?;
    let dir = lib.parent()?.parent()?.to_path_buf();
    Some((lib, libtorch_version(&dir)))
}

/// The version of the libtorch folder `dir` (the `torch` package or an unpacked libtorch).
pub fn libtorch_version(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        return text.lines().find_map(|l| {
            l.strip_prefix("__version__ = ")
                .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
        });
    }
    std::fs::read_to_string(dir.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// What a translator folder needs in memory: its weight files and the decoder's KV cache at its
/// longest context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFootprint {
    pub weight_bytes: u64,
    pub kv_cache_bytes: u64,
    pub positions: u64,
}

impl ModelFootprint {
    /// `dir`: a translator folder (`llm/config.json`) or a bare Llama folder (`config.json`).
    /// The KV cache is counted at `bytes_per_value` (4 for the CPU's f32, 2 for f16 on CUDA).
    pub fn of(dir: &Path, bytes_per_value: u64) -> Result<Self, String> {
        let config = [dir.join("llm/config.json"), dir.join("config.json")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| format!("{}: no llm/config.json or config.json", dir.display()))?;
        let text =
            std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
        let c: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
        let n = |k: &str| c[k].as_u64();
        let (Some(layers), Some(heads), Some(hidden), Some(positions)) = (
            n("num_hidden_layers"),
            n("num_attention_heads"),
            n("hidden_size"),
            n("max_position_embeddings"),
        ) else {
            return Err(format!(
                "{}: needs num_hidden_layers, num_attention_heads, hidden_size, max_position_embeddings",
                config.display()
            ));
        };
        let kv_heads = n("num_key_value_heads").unwrap_or(heads);
        let head_dim = n("head_dim").unwrap_or(hidden / heads.max(1));
        Ok(Self {
            weight_bytes: weight_bytes(dir),
            kv_cache_bytes: 2 * layers * kv_heads * head_dim * positions * bytes_per_value,
            positions,
        })
    }

    pub fn total(&self) -> u64 {
        self.weight_bytes + self.kv_cache_bytes
    }
}

/// Sum of the `.safetensors` files under `dir`.
fn weight_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => weight_bytes(&p),
                Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "safetensors") => {
                    e.metadata().map(|m| m.len()).unwrap_or(0)
                }
                _ => 0,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4t_releases_and_their_jetpack() {
        let r = L4tRelease::parse(
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n",
        )
        .unwrap();
        assert_eq!(
            (r.major, r.revision.as_str(), r.board.as_str()),
            (36, "4.3", "generic")
        );
        assert_eq!(r.jetpack(), Some("6.2"));
        let r = L4tRelease::parse(
            "# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64, DATE: x",
        )
        .unwrap();
        assert_eq!(r.jetpack(), Some("5.1.3"));
        assert_eq!(
            L4tRelease::parse("# R36 (release), REVISION: 3.0, BOARD: generic")
                .unwrap()
                .jetpack(),
            Some("6.0")
        );
        assert_eq!(
            L4tRelease::parse("# R32 (release), REVISION: 7.1")
                .unwrap()
                .jetpack(),
            None
        );
        assert_eq!(L4tRelease::parse("Ubuntu 22.04"), None);
        assert_eq!(L4tRelease::parse(""), None);
    }

    #[test]
    fn meminfo_and_nvpmodel() {
        assert_eq!(
            parse_meminfo(
                "MemTotal:        7994752 kB\nMemFree:  100 kB\nMemAvailable:    5120000 kB\n"
            ),
            Some((7_994_752, 5_120_000))
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
        assert_eq!(
            parse_nvpmodel("NV Power Mode: 15W\n0\n"),
            Some(("15W".into(), Some(0)))
        );
        assert_eq!(
            parse_nvpmodel("NVPM WARN: x\nNV Power Mode: MAXN_SUPER\n2\n"),
            Some(("MAXN_SUPER".into(), Some(2)))
        );
        assert_eq!(parse_nvpmodel("command not found"), None);
    }

    #[test]
    fn the_demo_model_footprint() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
        let f = ModelFootprint::of(&demo, 4).unwrap();
        // 4 layers x 2 kv heads x 64 x 512 positions x (k, v) x 4 bytes.
        assert_eq!(f.kv_cache_bytes, 2 * 4 * 2 * 64 * 512 * 4);
        assert_eq!(f.positions, 512);
        assert!(f.weight_bytes > 6_000_000, "{f:?}");
        assert!(ModelFootprint::of(Path::new("/nonexistent"), 4).is_err());
    }
}
