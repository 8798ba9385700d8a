//! The chat template a model ships (`tokenizer.chat_template`): Jinja, rendered by
//! minijinja as Hugging Face's `apply_chat_template` renders it, with Python's string
//! methods (pycompat) and `raise_exception`, so templates written for transformers work.
use crate::error::{LlmError, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;
use volt_formats::gguf::Gguf;

/// One message of a conversation, as the template sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// The roles volt passes to templates; anything else is refused before rendering.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts templates may use.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| LlmError::model(format!("tokenizer.chat_template does not compile: {e}")))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_owned(), eos_token: eos_token.to_owned() })
    }

    /// The template of a GGUF file, with its bos and eos texts.
    pub fn from_gguf(g: &Gguf, bos_token: &str, eos_token: &str) -> Result<Self> {
        let source = g
            .get("tokenizer.chat_template")?
            .as_str()
            .ok_or_else(|| LlmError::model("tokenizer.chat_template is not a string"))?;
        Self::new(source, bos_token, eos_token)
    }

    /// The template of a GGUF file, its bos and eos texts read from the file's
    /// vocabulary (`tokenizer.ggml.bos_token_id`, `eos_token_id`).
    pub fn from_gguf_tokens(g: &Gguf) -> Result<Self> {
        let text = |key: &str| -> String {
            let id = g.metadata.get(key).and_then(|v| v.as_u64());
            id.and_then(|i| g.get("tokenizer.ggml.tokens").ok()?.as_array()?.get(i as usize)?.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Self::from_gguf(g, &text("tokenizer.ggml.bos_token_id"), &text("tokenizer.ggml.eos_token_id"))
    }

    /// The template of a Hugging Face folder: `chat_template.jinja`, or
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named ones whose
    /// `default` is taken), with the bos and eos texts that file names.
    pub fn from_hf_folder(dir: &std::path::Path) -> Result<Self> {
        let config = crate::weights::read_json(dir, "tokenizer_config.json")?;
        let text = |key: &str| -> String {
            let v = &config[key];
            v.as_str().or_else(|| v["content"].as_str()).unwrap_or_default().to_owned()
        };
        let file = dir.join("chat_template.jinja");
        let source = if file.is_file() {
            std::fs::read_to_string(&file).map_err(|e| LlmError::model(format!("{}: {e}", file.display())))?
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        LlmError::model("tokenizer_config.json: no chat template named `default`")
                    })?,
                _ => {
                    return Err(LlmError::model(format!(
                    "{}: no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)",
                    dir.display()
                )))
                }
            }
        };
        Self::new(&source, &text("bos_token"), &text("eos_token"))
    }

    /// The prompt for `messages`, ending with the assistant's turn when
    /// `add_generation_prompt` (what a chat completion needs).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if let Some(m) = messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
            return Err(LlmError::input(format!(
                "`messages`: role \"{}\" is not one of {}",
                m.role,
                ROLES.join(", ")
            )));
        }
        let template = self.env.get_template("chat").map_err(|e| LlmError::model(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| LlmError::input(format!("the chat template refused the messages: {e}")))
    }
}
