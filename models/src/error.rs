//! Typed errors of `tolk-models`. Every variant names the file (and field or tensor) at fault.

use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: checkpoint does not match the model:{}", format_tensor_problems(.problems))]
    Tensors {
        path: PathBuf,
        problems: Vec<TensorProblem>,
    },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("sequence of {needed} positions does not fit the cache of {capacity}")]
    CacheFull { needed: usize, capacity: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
}

/// One way a checkpoint disagrees with the architecture its config describes.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorProblem {
    Missing {
        name: String,
        expected: Vec<i64>,
    },
    Unexpected {
        name: String,
        file: PathBuf,
    },
    Shape {
        name: String,
        file: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    Dtype {
        name: String,
        file: PathBuf,
        dtype: String,
    },
}

fn format_tensor_problems(problems: &[TensorProblem]) -> String {
    let mut out = String::new();
    for p in problems {
        out.push_str("\n  ");
        match p {
            TensorProblem::Missing { name, expected } => out.push_str(&format!(
                "missing tensor `{name}` (expected shape {expected:?})"
            )),
            TensorProblem::Unexpected { name, file } => {
                out.push_str(&format!("unexpected tensor `{name}` in {}", file.display()))
            }
            TensorProblem::Shape {
                name,
                file,
                expected,
                found,
            } => out.push_str(&format!(
                "tensor `{name}` in {} has shape {found:?}, expected {expected:?}",
                file.display()
            )),
            TensorProblem::Dtype { name, file, dtype } => out.push_str(&format!(
                "tensor `{name}` in {} has unsupported dtype {dtype}",
                file.display()
            )),
        }
    }
    out
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}
