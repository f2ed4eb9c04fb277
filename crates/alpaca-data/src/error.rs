//! The one error type of this crate: every variant says where the problem is, so that a user
//! can open the file at the named line and fix it.

use std::path::PathBuf;

/// A failure while reading, checking or encoding data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read at all (missing, unreadable).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line of the file is not what was expected.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The file as a whole is not what was expected (for example it holds no sentences).
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The tokenizer failed, or its output cannot be used as asked.
    #[error("{0}")]
    Tokenizer(String),
}

/// Result with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
