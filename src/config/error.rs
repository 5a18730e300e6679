//! A configuration problem: one line that says where, what and how to fix it.

/// A configuration problem, shown as one line:
/// `{source}: {field}: {problem}; {fix}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}; {fix}")]
pub struct ConfigError {
    /// The file, or `environment`.
    pub file: String,
    /// The key the value came from: a TOML path (`amqp.prefetch`), a Logto
    /// field (`accountSID`) or an environment variable.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl ConfigError {
    pub(crate) fn new(
        source: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: source.into(),
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
