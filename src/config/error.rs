use std::fmt;

/// Why a configuration was refused.
///
/// The message names where the bad value came from (the file, or the environment variable),
/// the offending key and, for a syntax error, the line.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is missing, out of range or inconsistent.
    Invalid {
        /// The offending key, dotted (`tiers.free.burst`).
        key: String,
        /// What is wrong with it.
        message: String,
        /// Where it was set (a file path, an environment variable), when known.
        origin: Option<String>,
    },
    /// The configuration could not be read or parsed (a missing file, bad TOML, a value of
    /// the wrong type, an unknown key).
    Load {
        /// The offending key, when the problem has one.
        key: Option<String>,
        /// What went wrong (for syntax errors, with the line and column).
        message: String,
        /// Where (a file path, an environment variable), when known.
        origin: Option<String>,
    },
}

impl ConfigError {
    /// An invalid value at `key`.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into(), origin: None }
    }

    /// The offending key, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Load { key, .. } => key.as_deref(),
        }
    }

    /// Adds where `key` was set, as figment knows it.
    #[cfg(feature = "config")]
    pub(crate) fn located(self, figment: &figment::Figment) -> Self {
        match self {
            Self::Invalid { key, message, origin: None } => {
                let lookup = key.replace('"', "");
                let origin = figment
                    .find_metadata(&lookup)
                    .or_else(|| {
                        // The key may be a table entry whose own metadata is its parent's.
                        let parent = lookup.rsplit_once('.').map(|(p, _)| p)?;
                        figment.find_metadata(parent)
                    })
                    .and_then(describe)
                    .or_else(|| {
                        // A key that was never set (a missing default): name the file read.
                        figment.metadata().find_map(|m| match &m.source {
                            Some(figment::Source::File(path)) => Some(path.display().to_string()),
                            _ => None,
                        })
                    });
                Self::Invalid { key, message, origin }
            }
            other => other,
        }
    }

    #[cfg(feature = "config")]
    pub(crate) fn from_figment(error: figment::Error) -> Self {
        let error =
            error.into_iter().next().unwrap_or_else(|| figment::Error::from("unknown error".to_owned()));
        let key = (!error.path.is_empty()).then(|| error.path.join("."));
        let origin = error.metadata.as_ref().and_then(describe);
        Self::Load { key, message: error.kind.to_string(), origin }
    }
}

#[cfg(feature = "config")]
fn describe(metadata: &figment::Metadata) -> Option<String> {
    use figment::Source;
    match &metadata.source {
        Some(Source::File(path)) => Some(path.display().to_string()),
        Some(Source::Code(_)) | Some(Source::Custom(_)) | None if metadata.name.contains("Serialized") => {
            None
        }
        Some(other) => Some(format!("{} ({other})", metadata.name)),
        None => Some(metadata.name.to_string()),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid { key, message, origin } => {
                if let Some(origin) = origin {
                    write!(f, "{origin}: ")?;
                }
                write!(f, "`{key}` {message}")
            }
            Self::Load { key, message, origin } => {
                if let Some(origin) = origin {
                    write!(f, "{origin}: ")?;
                }
                if let Some(key) = key {
                    write!(f, "`{key}`: ")?;
                }
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<crate::policy::LimitsError> for ConfigError {
    fn from(error: crate::policy::LimitsError) -> Self {
        Self::invalid(error.key(), error.message())
    }
}
