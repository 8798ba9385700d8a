//! The batch script an attempt is submitted with.
use crate::backend::{node_script_then, own_path, shell_quote, Launch};
use std::path::Path;

/// A spec's memory (`8GB`, `512M`, `16g`) as Slurm writes it (`8G`, `512M`).
pub(super) fn slurm_memory(mem: &str) -> String {
    mem.trim().trim_end_matches(['b', 'B']).to_uppercase()
}

/// The CPUs each task asks for, a whole number (`resources.cpus` rounded up).
pub(super) fn cpus_per_task(launch: &Launch) -> Option<u64> {
    launch.resources.cpus.map(|c| c.ceil().max(1.0) as u64)
}

/// The batch script of an attempt. A requeued run is attempt `K + SLURM_RESTART_COUNT`:
/// it logs into that attempt's folder, and its nodes get that `VOLT_JOB_ATTEMPT` and a
/// fresh `MASTER_PORT`. Nodes get torchrun-style variables (one process each, as on the
/// other backends); `MASTER_ADDR` is the first host of the allocation, where node 0 runs.
pub(super) fn batch_script(launch: &Launch, job_dir: &Path) -> String {
    let own = [
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "NODE_RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "VOLT_JOB_ATTEMPT",
    ];
    let mut exports: Vec<String> = launch
        .env
        .iter()
        .filter(|(k, _)| !own.contains(&k.as_str()))
        .map(|(k, v)| format!("export {k}={}", shell_quote(v)))
        .collect();
    if let Some(path) = own_path().and_then(|p| p.into_string().ok()) {
        exports.push(format!("export PATH={}", shell_quote(&path)));
    }
    // Each task says where it runs and beats while it runs (the controller notices a
    // lost node from its silence within seconds; Slurm takes SlurmdTimeout). The beat
    // ignores SIGTERM, so a node being stopped still beats until its step ends, and only
    // a lost one falls silent. Slurm signals every process of a step, and kills what is
    // left once the task's shell exits: the shell catches SIGTERM (its children do not
    // inherit a caught signal), so it outlives `run` — volt fit writing `last` — and
    // records its exit code.
    let node = format!(
        "export RANK=$SLURM_PROCID NODE_RANK=$SLURM_PROCID LOCAL_RANK=0 LOCAL_WORLD_SIZE=1\n\
         node=\"$VOLT_ATTEMPT_DIR/node-$SLURM_PROCID\"\n\
         export VOLT_EXIT_FILE=\"$node.exit\"\n\
         hostname > \"$node.host\"\n\
         (trap '' TERM; while :; do date +%s%N > \"$node.alive\"; sleep 1; done) &\n\
         beat=$!\n\
         trap 'kill -KILL $beat 2>/dev/null' EXIT\n\
         trap 'signalled=1' TERM\n\
         {}",
        // A run that ends well after Slurm's SIGTERM stopped early (a time limit, a
        // preemption, an admin's scancel; a requeue is told apart by its restart count).
        node_script_then(
            launch.setup.as_deref(),
            &launch.run,
            "if [ \"$code\" = 0 ] && [ -n \"${signalled:-}\" ]; then code=143; fi\n"
        )
    );
    format!(
        "#!/bin/bash\n\
         # volt job {uid}, attempt {attempt} (and one more at each requeue by Slurm).\n\
         {exports}\n\
         attempt=$(( {attempt} + ${{SLURM_RESTART_COUNT:-0}} ))\n\
         export VOLT_JOB_ATTEMPT=$attempt\n\
         export VOLT_ATTEMPT_DIR={job_dir}/attempt-$attempt\n\
         mkdir -p \"$VOLT_ATTEMPT_DIR\"\n\
         echo \"volt: attempt $attempt on $SLURM_JOB_NODELIST\"\n\
         MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n\
         export MASTER_ADDR\n\
         # A port nothing listens on at node 0 (this script runs there), fresh per run.\n\
         port=$(( 15000 + (SLURM_JOB_ID * 16 + ${{SLURM_RESTART_COUNT:-0}}) % 40000 ))\n\
         for _ in $(seq 100); do\n\
           (exec 3<>\"/dev/tcp/127.0.0.1/$port\") 2>/dev/null || break\n\
           port=$(( port + 1 ))\n\
         done\n\
         export MASTER_PORT=$port\n\
         exec srun --kill-on-bad-exit=1{cpus} --open-mode=append --output=\"$VOLT_ATTEMPT_DIR/node-%t.log\" \\\n  \
           sh -c {node}\n",
        // srun takes no --cpus-per-task from sbatch's (Slurm 22.05 to 23.02).
        cpus = cpus_per_task(launch).map_or_else(String::new, |c| format!(" --cpus-per-task={c}")),
        uid = launch.job_uid,
        attempt = launch.attempt,
        exports = exports.join("\n"),
        job_dir = shell_quote(&job_dir.display().to_string()),
        node = shell_quote(&node),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    #[test]
    fn the_batch_script_is_sound_shell_whatever_the_paths_and_values() {
        let odd = PathBuf::from("/tmp/a b/it's \"odd\"/$HOME/`x`");
        let launch = Launch {
            rank: 0,
            host: None,
            job_uid: "7-1".into(),
            attempt: 2,
            num_nodes: 2,
            resources: volt_config::Resources { cpus: Some(1.5), ..Default::default() },
            partition: None,
            workdir: odd.clone(),
            setup: Some("echo 'set up'".into()),
            run: "echo \"$RANK\" && exit 3".into(),
            env: vec![("ODD".into(), "a 'b' \"c\" $d `e`".into())],
            log: odd.join("attempt-2/node-0.log"),
            exit_file: odd.join("attempt-2/node-0.exit"),
        };
        let script = batch_script(&launch, &odd);
        for shell in ["bash", "sh"] {
            let out = Command::new(shell).arg("-n").arg("-c").arg(&script).output().expect(shell);
            assert!(out.status.success(), "{shell}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(script.contains("--cpus-per-task=2"), "{script}");
        assert!(script.contains("attempt=$(( 2 + ${SLURM_RESTART_COUNT:-0} ))"), "{script}");
    }

    #[test]
    fn memory_is_written_the_way_slurm_reads_it() {
        for (spec, slurm) in [("8GB", "8G"), ("512M", "512M"), ("16g", "16G"), ("100", "100")] {
            assert_eq!(slurm_memory(spec), slurm);
        }
    }
}
