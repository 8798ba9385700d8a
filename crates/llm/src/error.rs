//! The one error type of volt-llm.

/// What can go wrong reading a model or preparing its input.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model file cannot be used; the message names what is wrong in it.
    #[error("{0}")]
    Model(String),
    /// The input cannot be rendered or tokenized (a bad role, a template error).
    #[error("{0}")]
    Input(String),
}

impl LlmError {
    pub(crate) fn model(m: impl Into<String>) -> Self {
        LlmError::Model(m.into())
    }
    pub(crate) fn input(m: impl Into<String>) -> Self {
        LlmError::Input(m.into())
    }
}

impl From<volt_formats::FormatError> for LlmError {
    fn from(e: volt_formats::FormatError) -> Self {
        LlmError::Model(e.to_string())
    }
}

/// Results of volt-llm.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;
