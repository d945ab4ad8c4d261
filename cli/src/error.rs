//! [`CliError`]: usage errors (exit code 2) and runtime errors (exit code 1).

use std::fmt;

/// An error of the `ntk` command. Messages are one line and name the flag, file or value.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags or values (exit code 2).
    Usage(String),
    /// Failure while running (exit code 1).
    Runtime(String),
}

impl CliError {
    /// A usage error naming a flag and the offending value.
    pub fn flag(flag: &str, value: impl fmt::Display, why: impl fmt::Display) -> Self {
        CliError::Usage(format!("{flag} {value}: {why}"))
    }
    /// Process exit code: 2 for usage, 1 for runtime.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

impl From<ntk_core::Error> for CliError {
    fn from(e: ntk_core::Error) -> Self {
        match e {
            ntk_core::Error::InvalidSpec { .. } | ntk_core::Error::Parse { .. } => {
                CliError::Usage(e.to_string())
            }
            _ => CliError::Runtime(e.to_string()),
        }
    }
}

impl From<crate::io::IoError> for CliError {
    fn from(e: crate::io::IoError) -> Self {
        CliError::Runtime(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Runtime(e.to_string())
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;
