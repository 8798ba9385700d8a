//! `volt job launch | ls | status | logs | cancel`: jobs through the control plane.
use crate::studio::{connect, runtime};
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use volt::CliError;
use volt_studio::{Client, ClientError, JobStatus};

/// `volt job` subcommands.
#[derive(Subcommand)]
pub enum JobCommand {
    /// Launch the job a spec file (TOML or YAML) describes; prints its id.
    Launch {
        /// The spec.
        file: PathBuf,
        /// Stream node 0's log until the job ends; exit 0 only if it succeeded.
        #[arg(long)]
        follow: bool,
    },
    /// List the jobs: id, name, backend, nodes, status, attempt, age.
    Ls,
    /// A job's status, nodes and events.
    Status {
        /// The job's id.
        id: i64,
    },
    /// A node's log, every attempt's.
    Logs {
        /// The job's id.
        id: i64,
        /// Keep following it, across attempts, until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// The node (0 is the one with rank 0).
        #[arg(long, default_value_t = 0)]
        node: i64,
        /// Only this attempt's.
        #[arg(long)]
        attempt: Option<i64>,
    },
    /// Stop a job's nodes.
    Cancel {
        /// The job's id.
        id: i64,
    },
}

fn api(e: ClientError) -> CliError {
    match e {
        ClientError::Api { status: 400, message } => CliError::Usage(message),
        other => CliError::Run(other.to_string()),
    }
}

/// Runs `volt job ...`.
pub fn run(command: JobCommand) -> Result<(), CliError> {
    // The spec is checked before anything is started or submitted.
    let loaded = match &command {
        JobCommand::Launch { file, .. } => Some(volt_config::JobSpec::load(file).map_err(CliError::from)?),
        _ => None,
    };
    runtime()?.block_on(async move {
        let client = connect().await?;
        match command {
            JobCommand::Launch { follow, .. } => {
                let Some(job) = loaded else { return Ok(()) };
                let id = client.launch(&job).await.map_err(api)?;
                println!("{id}");
                eprintln!(
                    "job {id} launched: {} ({} node(s), {})",
                    job.spec.name,
                    job.spec.num_nodes,
                    job.spec.backend.kind.name()
                );
                if follow {
                    return follow_logs(&client, id, 0, None).await;
                }
                Ok(())
            }
            JobCommand::Ls => {
                let jobs = client.jobs().await.map_err(api)?;
                println!(
                    "{:<5} {:<24} {:<8} {:>5}  {:<10} {:>7}  {:>5}",
                    "ID", "NAME", "BACKEND", "NODES", "STATUS", "ATTEMPT", "AGE"
                );
                let now = volt_studio::store::now_ms();
                for j in jobs {
                    println!(
                        "{:<5} {:<24} {:<8} {:>5}  {:<10} {:>7}  {:>5}",
                        j.id,
                        j.name,
                        j.backend,
                        j.num_nodes,
                        j.status.as_str(),
                        j.attempt,
                        age(now - j.created_at)
                    );
                }
                Ok(())
            }
            JobCommand::Status { id } => {
                let d = client.job(id).await.map_err(api)?;
                let j = &d.job;
                println!(
                    "job {} ({}): {}, attempt {} of {}",
                    j.id,
                    j.name,
                    j.status.as_str(),
                    j.attempt,
                    j.max_attempts()
                );
                if let Some(r) = &j.reason {
                    println!("reason: {r}");
                }
                println!(
                    "backend {}, {} node(s), workdir {}",
                    j.backend,
                    j.num_nodes,
                    j.spec.workdir.display()
                );
                println!("run: {}", j.spec.spec.run);
                println!("nodes:");
                for n in &d.nodes {
                    let code = n.exit_code.map_or_else(String::new, |c| format!(" (exit {c})"));
                    println!(
                        "  attempt {} node {} on {}: {}{code}",
                        n.attempt,
                        n.rank,
                        n.host,
                        n.status.as_str()
                    );
                }
                println!("events:");
                let now = volt_studio::store::now_ms();
                for e in &d.events {
                    println!("  {:>5} ago  [attempt {}] {}", age(now - e.at), e.attempt, e.message);
                }
                Ok(())
            }
            JobCommand::Logs { id, follow, node, attempt } => {
                if follow {
                    return follow_logs(&client, id, node, attempt).await;
                }
                let job = client.job(id).await.map_err(api)?.job;
                let attempts: Vec<i64> = match attempt {
                    Some(a) => vec![a],
                    None => (1..=job.attempt).collect(),
                };
                for a in attempts {
                    print_attempt(&client, id, node, a, job.attempt > 1 && attempt.is_none(), 0).await?;
                }
                Ok(())
            }
            JobCommand::Cancel { id } => {
                client.cancel(id).await.map_err(api)?;
                eprintln!("job {id}: cancelling");
                Ok(())
            }
        }
    })
}

/// Prints an attempt's log from `offset`; where it ended.
async fn print_attempt(
    client: &Client,
    id: i64,
    node: i64,
    attempt: i64,
    header: bool,
    offset: u64,
) -> Result<u64, CliError> {
    let mut at = offset;
    loop {
        let chunk = client.logs(id, Some(attempt), node, at).await.map_err(api)?;
        let mut out = std::io::stdout().lock();
        if header && at == 0 && !chunk.bytes.is_empty() {
            writeln!(out, "== attempt {attempt}, node {node} ==")
                .map_err(|e| CliError::Run(e.to_string()))?;
        }
        out.write_all(&chunk.bytes).and_then(|()| out.flush()).map_err(|e| CliError::Run(e.to_string()))?;
        at += chunk.bytes.len() as u64;
        if chunk.bytes.is_empty() || at >= chunk.size {
            return Ok(at);
        }
    }
}

/// Follows node `node`'s log from its first attempt (or `only`) to the job's end; exit
/// 1 unless the job succeeded.
async fn follow_logs(client: &Client, id: i64, node: i64, only: Option<i64>) -> Result<(), CliError> {
    let mut attempt = only.unwrap_or(1);
    let mut offset = 0;
    loop {
        let job = client.job(id).await.map_err(api)?.job;
        // Attempts are headed once there is more than one.
        let header = only.is_none() && job.attempt > 1;
        if job.attempt >= attempt {
            offset = print_attempt(client, id, node, attempt, header, offset).await?;
        }
        if job.attempt > attempt && only.is_none() {
            // That attempt is over: what it wrote is all printed; on to the next.
            attempt += 1;
            offset = 0;
            continue;
        }
        // Printed after the job was seen over: its last words are in.
        if job.status.is_final() {
            return match job.status {
                JobStatus::Succeeded => Ok(()),
                s => Err(CliError::Run(format!(
                    "job {id} {}{}",
                    s.as_str(),
                    job.reason.map_or_else(String::new, |r| format!(": {r}"))
                ))),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ms` as the largest whole unit: 42s, 5m, 3h, 2d.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
