"""Shared by the training cases: run one benchmark process the harness's way."""
import os
import subprocess
import sys
import time


def launch(cmd):
    """Runs `cmd` with BENCH_T0 set to its launch time; returns its stdout and its peak
    RSS in MB; exits the harness, naming the command, if it fails."""
    env = dict(os.environ, BENCH_T0=repr(time.time()))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed with status {status}\n{out}")
    return out, usage.ru_maxrss / 1024


def launch_lines(cmd):
    """As `launch`, but returns its stdout as (seconds since BENCH_T0 when the line was
    read, line) pairs, for runs whose own report is too coarse to time them by."""
    t0 = time.time()
    env = dict(os.environ, BENCH_T0=repr(t0))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
    lines = [(time.time() - t0, line.rstrip("\n")) for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed with status {status}\n" + "\n".join(l for _, l in lines))
    return lines, usage.ru_maxrss / 1024
