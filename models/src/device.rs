//! Device and dtype names as the CLIs and config files spell them.

use crate::{ModelError, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda` (first GPU) or `cuda:N`; surrounding white space is ignored. Only the name is
/// checked: [`available_device`] also checks that CUDA is there.
pub fn parse_device(s: &str) -> Result<Device> {
    match s.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "unknown device `{s}` (expected cpu, cuda or cuda:N)"
                ))
            }),
    }
}

/// [`parse_device`], then an error naming the device when it asks for CUDA on a machine without
/// it (rather than a libtorch failure at the first tensor moved there).
pub fn available_device(s: &str) -> Result<Device> {
    let device = parse_device(s)?;
    if let Device::Cuda(i) = device {
        let count = tch::Cuda::device_count();
        if i as i64 >= count {
            return Err(ModelError::InvalidArgument(format!(
                "device `{s}`: CUDA is not available on this machine ({count} CUDA devices)"
            )));
        }
    }
    Ok(device)
}

/// `f32`, `f16` or `bf16` (also the long names).
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(ModelError::InvalidArgument(format!(
            "unknown dtype `{s}` (expected f32, f16 or bf16)"
        ))),
    }
}

pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        Kind::Int8 => "i8",
        Kind::Int64 => "i64",
        _ => "other",
    }
}

/// Size of one element, in bytes.
pub fn dtype_size(kind: Kind) -> usize {
    kind.elt_size_in_bytes()
}

/// Read bandwidth of `device` in bytes/s: the best of five full reductions over a buffer of
/// `bytes` (make it much larger than the caches: the access pattern of a batch-1 decode step,
/// which reads every weight once).
pub fn read_bandwidth(device: Device, bytes: i64) -> f64 {
    let n = (bytes / 4).max(1);
    let buf = tch::Tensor::ones([n], (Kind::Float, device));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let s = buf.sum(Kind::Float);
        let _ = s.double_value(&[]);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 4) as f64 / best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda:1").unwrap(), Device::Cuda(1));
        assert_eq!(parse_device(" cuda ").unwrap(), Device::Cuda(0));
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(available_device("cpu").unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            let e = available_device("cuda").unwrap_err().to_string();
            assert!(e.contains("CUDA is not available"), "{e}");
        }
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert!(parse_dtype("f8").is_err());
    }
}
