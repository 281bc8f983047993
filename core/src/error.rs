//! The library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `cleanse-core`, with the file, record or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written. The OS error is part of the message and
    /// deliberately not exposed as `source()`: error reporters that print the cause chain would
    /// print it a second time.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A data file does not have the expected layout.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// One record of a data file is invalid.
    #[error("{path}: record {record}: {reason}")]
    BadRecord {
        path: PathBuf,
        record: usize,
        reason: String,
    },
    /// A data set directory holds nothing usable.
    #[error("{path}: {reason}")]
    NoData { path: PathBuf, reason: String },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: PathBuf, reason: String },
    /// A setting is out of range or inconsistent.
    #[error("invalid setting `{name}`: {reason}")]
    Config { name: String, reason: String },
    /// The requested compute device cannot be used.
    #[error("device `{device}` unavailable: {reason}")]
    Device { device: String, reason: String },
    /// A saved artifact (checkpoint, model, report) is missing, foreign or of another version.
    #[error("{path}: {reason}")]
    Artifact { path: PathBuf, reason: String },
    /// Another live run holds the run directory (its lock dies with its process).
    #[error(
        "{path}: another cleanse run is using this directory; wait for it to end or choose \
         another --out"
    )]
    Busy { path: PathBuf },
    /// The run directory holds a finished run of the same configuration: nothing to do.
    #[error("{path}: complete already (a finished run of the same settings); nothing to do")]
    Complete { path: PathBuf },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A bad setting.
    pub fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// A bad artifact.
    pub fn artifact(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Artifact {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
