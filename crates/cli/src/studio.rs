//! `volt studio up` runs the control plane; every `volt job` command finds the running
//! one (`VOLT_STUDIO_URL`, else the one `$VOLT_HOME/studio.json` names) or starts one in
//! the background, as SkyPilot's CLI starts its local API server.
use clap::Subcommand;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use volt::CliError;
use volt_studio::{volt_home, Client, Home};

/// `volt studio` subcommands.
#[derive(Subcommand)]
pub enum StudioCommand {
    /// Run the control plane (API, store, job controller) in the foreground.
    Up {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free one; `$VOLT_HOME/studio.json` says which).
        #[arg(long, default_value_t = 8700)]
        port: u16,
    },
}

/// How long a control plane started in the background has to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `volt studio ...`.
pub fn run(command: StudioCommand) -> Result<(), CliError> {
    match command {
        StudioCommand::Up { host, port } => {
            let home = Home::at(volt_home())
                .map_err(|e| CliError::Run(format!("{}: {e}", volt_home().display())))?;
            // Several threads: the job controller's calls to ssh and tar leave the API free.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| CliError::Run(e.to_string()))?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind((host.as_str(), port))
                    .await
                    .map_err(|e| CliError::Usage(format!("--host {host} --port {port}: {e}")))?;
                volt_studio::serve(home, listener, |url| println!("studio listening on {url}"))
                    .await
                    .map_err(|e| CliError::Run(e.to_string()))
            })
        }
    }
}

/// A runtime for the CLI's calls to the control plane.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Run(e.to_string()))
}

/// A client of the control plane this CLI talks to, started first when none runs.
pub async fn connect() -> Result<Client, CliError> {
    if let Some(url) = std::env::var("VOLT_STUDIO_URL").ok().filter(|u| !u.is_empty()) {
        let token = std::env::var("VOLT_STUDIO_TOKEN").unwrap_or_default();
        let client = Client::new(&url, &token);
        if !client.healthy().await {
            return Err(CliError::Run(format!("no control plane answers at {url} (VOLT_STUDIO_URL)")));
        }
        return Ok(client);
    }
    let home = Home::at(volt_home()).map_err(|e| CliError::Run(format!("{}: {e}", volt_home().display())))?;
    let token = |home: &Home| home.token().map_err(|e| CliError::Run(format!("the studio token: {e}")));
    if let Some(l) = home.listening() {
        let client = Client::new(&l.url, &token(&home)?);
        if client.healthy().await {
            return Ok(client);
        }
    }
    let pid = start_in_background(&home)?;
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Some(l) = home.listening().filter(|l| l.pid == pid) {
            let client = Client::new(&l.url, &token(&home)?);
            if client.healthy().await {
                eprintln!("started the control plane at {} (pid {pid}, log {})", l.url, home.log().display());
                return Ok(client);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(CliError::Run(format!(
        "the control plane did not start within {}s; its log is {}",
        START_TIMEOUT.as_secs(),
        home.log().display()
    )))
}

/// The control plane in a session of its own, its output to the home's log: the
/// libtorch-free `volt-studio` next to this binary when there is one, else `volt studio up`.
fn start_in_background(home: &Home) -> Result<u32, CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::Run(format!("the volt binary: {e}")))?;
    let alone = exe.with_file_name("volt-studio");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.log())
        .map_err(|e| CliError::Run(format!("{}: {e}", home.log().display())))?;
    let err = log.try_clone().map_err(|e| CliError::Run(e.to_string()))?;
    let mut command = if alone.is_file() {
        Command::new(alone)
    } else {
        let mut c = Command::new(exe);
        c.args(["studio", "up"]);
        c
    };
    command.args(["--port", "0"]).stdin(Stdio::null()).stdout(log).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| CliError::Run(format!("cannot start the control plane: {e}")))?;
    Ok(child.id())
}
