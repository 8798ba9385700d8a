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
