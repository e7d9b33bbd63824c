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

    /// The first of figment's errors, with every secret it would show redacted: an API key
    /// in the path (`api_keys.<key>`), a string value given where API keys belong, and the
    /// source line a syntax error quotes (any line may hold a key; the line and column stay).
    #[cfg(feature = "config")]
    pub(crate) fn from_figment(error: figment::Error) -> Self {
        use figment::error::{Actual, Kind};
        let mut error =
            error.into_iter().next().unwrap_or_else(|| figment::Error::from("unknown error".to_owned()));
        let secret = match error.path.first().map(String::as_str) {
            Some("api_keys") => true,
            Some("admin" | "allow") => error.path.get(1).is_some_and(|p| p == "keys"),
            _ => false,
        };
        if error.path.first().is_some_and(|p| p == "api_keys") {
            if let Some(key) = error.path.get_mut(1) {
                *key = format!("\"{}\"", crate::key::redact(key).escape_debug());
            }
        }
        if secret {
            if let Kind::InvalidType(Actual::Str(value), _) | Kind::InvalidValue(Actual::Str(value), _) =
                &mut error.kind
            {
                *value = crate::key::redact(value);
            }
        }
        // An API key written outside `[api_keys]` (a line above its header, or under another
        // table) is an unknown field, or a key of another table: such a name is redacted too
        // when it looks like a secret rather than a word of the configuration.
        let skip = usize::from(error.path.first().is_some_and(|p| p == "api_keys")) * 2;
        for element in error.path.iter_mut().skip(skip) {
            if looks_secret(element) {
                *element = format!("\"{}\"", crate::key::redact(element).escape_debug());
            }
        }
        if let Kind::UnknownField(field, _) = &mut error.kind {
            if looks_secret(field) {
                *field = crate::key::redact(field);
            }
        }
        let message = match &error.kind {
            Kind::Message(message) => without_source_lines(message),
            kind => kind.to_string(),
        };
        let key = (!error.path.is_empty()).then(|| error.path.join("."));
        let origin = error.metadata.as_ref().and_then(describe);
        Self::Load { key, message, origin }
    }
}

/// Whether a name found where a configuration key belongs may be an API key: long, made of
/// letters and digits both, and not a route (no `/`) nor words (no space). Words of the
/// configuration (`requests_per_minute`, `ipv6_prefix`), tier names and routes are not.
#[cfg(feature = "config")]
fn looks_secret(name: &str) -> bool {
    name.len() >= 16
        && name.bytes().any(|b| b.is_ascii_digit())
        && name.bytes().any(|b| b.is_ascii_alphabetic())
        && !name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace())
}

/// A parser's message without the source lines it quotes (`3 | "key" = …` and the `|` lines
/// around them): the line and column it names are kept.
#[cfg(feature = "config")]
fn without_source_lines(message: &str) -> String {
    let quoted = |line: &str| {
        let line = line.trim_start();
        let digits = line.trim_start_matches(|c: char| c.is_ascii_digit());
        line.starts_with('|') || (digits.len() < line.len() && digits.trim_start().starts_with('|'))
    };
    let kept: Vec<&str> = message.lines().filter(|line| !quoted(line)).map(str::trim_end).collect();
    kept.join("\n").trim().to_owned()
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
