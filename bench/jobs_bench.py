"""What the control plane costs a job (bench/run platform/jobs).

usage: jobs_bench.py VOLT_BIN RUN_DIR ROUNDS

1. Launch to first step of a 2-node digits ddp job: started by hand (two `volt fit`
   processes with torchrun's variables) against `volt job launch`, interleaved, ROUNDS
   each. The first step is when the run's first step checkpoint appears
   (`every_n_train_steps 1`).
2. A node's death to the next attempt's first step: rank 1's trainer killed with
   SIGKILL once the run has checkpointed; the time until attempt 2 writes its first new
   checkpoint.
3. The control plane's RSS, idle and with 100 finished jobs in its store.
4. With VOLT_BENCH_SLURM_RIG (a scripts/slurm-rig folder; SLURM_CONF set): on Slurm, the
   node running rank 0 lost (`slurm-rig lose`), and separately `scontrol requeue`, each
   to the next attempt's first step (its first checkpoint after its tasks started).
Prints one JSON object.
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

volt, run_dir, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
home = os.path.join(run_dir, "home")
env = dict(os.environ, VOLT_HOME=home)
env.pop("VOLT_STUDIO_URL", None)

FIT = [volt, "fit", "--model", "digits-mlp", "--seed", "0", "--trainer.strategy", "ddp",
       "--trainer.num_nodes", "2", "--trainer.num_threads", "1", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--callbacks.model_checkpoint.every_n_train_steps", "1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_file(path, after=0.0, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_mtime > after:
                return time.time()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"{path} did not appear within {limit}s")


def last(root):
    return os.path.join(root, "lightning_logs", "version_0", "checkpoints", "last.safetensors")


def by_hand(root, steps):
    port = str(free_port())
    start = time.time()
    procs = [subprocess.Popen(FIT + ["--trainer.max_steps", str(steps), "--trainer.default_root_dir", root],
                              env=dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2",
                                       RANK=str(r), NODE_RANK=str(r), LOCAL_RANK="0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(2)]
    first = wait_file(last(root))
    for p in procs:
        p.wait()
    return first - start


# The control plane `volt job` starts: the libtorch-free volt-studio next to volt.
alone = os.path.join(os.path.dirname(volt), "volt-studio")
command = [alone] if os.path.exists(alone) else [volt, "studio", "up"]
studio = subprocess.Popen(command + ["--port", "0"], env=env, stdout=subprocess.PIPE)
url = studio.stdout.readline().decode().strip().removeprefix("studio listening on ")
token = open(os.path.join(home, "token")).read().strip()


def api(path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


def wait_job(job_id, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        d = api(f"/api/jobs/{job_id}")
        if d["job"]["status"] in ("succeeded", "failed", "cancelled"):
            return d
        time.sleep(0.05)
    raise SystemExit(f"job {job_id} did not end")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def launch(spec_text, name):
    spec = os.path.join(run_dir, f"{name}.toml")
    with open(spec, "w") as f:
        f.write(spec_text)
    start = time.time()
    out = subprocess.run([volt, "job", "launch", spec], env=env, capture_output=True, check=True)
    return int(out.stdout.decode().strip()), start


def job_spec(root, steps, restarts=0):
    run = " ".join(FIT + ["--trainer.max_steps", str(steps), "--trainer.default_root_dir", root])
    return f'num_nodes = 2\nrun = "{run}"\n[retry]\nmax_restarts = {restarts}\n'


idle_rss = rss_mb(studio.pid)
hand, job = [], []
for r in range(rounds):
    hand.append(by_hand(os.path.join(run_dir, f"hand{r}"), 5))
    root = os.path.join(run_dir, f"job{r}")
    job_id, start = launch(job_spec(root, 5), f"job{r}")
    job.append(wait_file(last(root)) - start)
    wait_job(job_id)

recover = []
for r in range(rounds):
    root = os.path.join(run_dir, f"recover{r}")
    job_id, _ = launch(job_spec(root, 3000, restarts=1), f"recover{r}")
    wait_file(last(root))
    node = next(n for n in api(f"/api/jobs/{job_id}")["nodes"] if n["rank"] == 1)
    sh = json.loads(node["handle"])["pid"]
    trainer = [int(p) for p in os.listdir("/proc") if p.isdigit() and
               open(f"/proc/{p}/stat").read().rsplit(")", 1)[-1].split()[1] == str(sh)]
    killed = time.time()
    for p in trainer:
        os.kill(p, signal.SIGKILL)
    # Attempt 2 resumes and checkpoints its first step: the file changes after the kill.
    deadline = time.monotonic() + 120
    while api(f"/api/jobs/{job_id}")["job"]["attempt"] < 2:
        if time.monotonic() > deadline:
            raise SystemExit("no attempt 2")
        time.sleep(0.01)
    recover.append(wait_file(last(root), after=killed) - killed)
    api(f"/api/jobs/{job_id}/cancel", {})
    wait_job(job_id)

slurm = {}
rig = os.environ.get("VOLT_BENCH_SLURM_RIG")
if rig:
    def next_first_step(job_id, root):
        # Attempt 2's tasks write their host name as they start; its first step follows.
        started = os.path.join(home, "jobs", str(job_id), "attempt-2", "node-0.host")
        wait_file(started)
        return wait_file(last(root), after=os.stat(started).st_mtime)

    for how in ("lost_node", "requeue"):
        slurm[how] = []
        for r in range(rounds):
            root = os.path.join(run_dir, f"slurm-{how}{r}")
            job_id, _ = launch(job_spec(root, 3000, restarts=1) + '[backend]\nkind = "slurm"\n', f"{how}{r}")
            wait_file(last(root))
            if how == "lost_node":
                host = open(os.path.join(home, "jobs", str(job_id), "attempt-1", "node-0.host")).read().strip()
                broke = time.time()
                subprocess.run(["scripts/slurm-rig", "lose", rig, host.removeprefix("n")], check=True,
                               capture_output=True)
            else:
                node = next(n for n in api(f"/api/jobs/{job_id}")["nodes"] if n["rank"] == 0)
                broke = time.time()
                subprocess.run(["scontrol", "requeue", str(json.loads(node["handle"])["job"])], check=True)
            slurm[how].append(next_first_step(job_id, root) - broke)
            api(f"/api/jobs/{job_id}/cancel", {})
            wait_job(job_id)
    slurm = {how: {"median": statistics.median(v), "all": v} for how, v in slurm.items()}

for i in range(100):
    job_id = api("/api/jobs", {"spec": {"name": f"noop{i}", "num_nodes": 1, "workdir": ".", "setup": None,
                                        "run": "true", "env": {}, "resources": {}, "retry": {"max_restarts": 0},
                                        "backend": {"kind": "local", "hosts": None, "partition": None}},
                               "workdir": run_dir, "hosts": []})["id"]
wait_job(job_id)
time.sleep(1)
full_rss = rss_mb(studio.pid)
studio.send_signal(signal.SIGTERM)
studio.wait()
print(json.dumps({
    "case": "platform/jobs", "rounds": rounds,
    "launch_to_first_step_s": {"by_hand": statistics.median(hand), "volt_job": statistics.median(job),
                               "by_hand_all": hand, "volt_job_all": job},
    "death_to_next_first_step_s": {"median": statistics.median(recover), "all": recover},
    "studio_rss_mb": {"idle": round(idle_rss, 1), "with_100_finished_jobs": round(full_rss, 1)},
    "slurm_to_next_first_step_s": slurm or "not run (not in smoke runs; it needs root and Slurm: scripts/slurm-rig)",
}, indent=2))
