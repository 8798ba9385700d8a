"""train/digits-mlp: volt's Trainer against PyTorch Lightning, and the two hand-written
loops (tch, plain PyTorch) as each side's floor. With --ddp2, train/digits-mlp-ddp2:
volt's ddp against Lightning's ddp, 2 CPU processes of one thread each over gloo.
Each run is its own process, launched in turn (A B C D A B C D ...); reports medians
(min-max) of steps/s, peak RSS (of rank 0's process under ddp), time from process
launch to the first optimizer step, the share of the loop spent in all-reduces (ddp),
and the volt/peer ratios.

Usage: train_digits.py VOLT_BIN PYTHON ROUNDS EPOCHS OUT_JSON [--smoke] [--ddp2]"""
import json
import os
import statistics
import sys
import tempfile

from launch import launch


def run(cmd):
    out, rss = launch(cmd)
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "steps_per_s": (result["steps"] - 1) / result["train_seconds"],
        "peak_rss_mb": rss,
        "first_step_s": result["first_step_s"],
        "comm_share": result.get("comm_share", 0.0),
    }


def main():
    volt_bin, python, rounds, epochs, out_json = sys.argv[1:6]
    smoke = "--smoke" in sys.argv
    ddp = "--ddp2" in sys.argv
    case = "train/digits-mlp-ddp2" if ddp else "train/digits-mlp"
    here = os.path.dirname(os.path.abspath(__file__))
    peer = os.path.join(here, "peers", "lightning_digits.py")
    tmp = tempfile.mkdtemp()
    if ddp:
        cases = {"volt Trainer ddp2": [volt_bin, "ddp2", epochs, os.path.join(tmp, "volt")]}
        if not smoke:
            cases["Lightning ddp2"] = [python, peer, "--mode", "lightning-ddp2", "--epochs", epochs,
                                       "--out", os.path.join(tmp, "pl")]
        pairs = (("volt Trainer ddp2", "Lightning ddp2"),)
    else:
        cases = {
            "volt Trainer": [volt_bin, "trainer", epochs, os.path.join(tmp, "volt")],
            "volt tch loop": [volt_bin, "loop", epochs, tmp],
        }
        if not smoke:
            cases["Lightning Trainer"] = [python, peer, "--mode", "lightning", "--epochs", epochs,
                                          "--out", os.path.join(tmp, "pl")]
            cases["PyTorch loop"] = [python, peer, "--mode", "torch", "--epochs", epochs]
        pairs = (("volt Trainer", "Lightning Trainer"), ("volt tch loop", "PyTorch loop"))
    runs = {name: [] for name in cases}
    for r in range(int(rounds)):
        for name, cmd in cases.items():
            print(f"bench: {case} {name} round {r + 1}", file=sys.stderr)
            runs[name].append(run(cmd))
    rows = {}
    for name, rs in runs.items():
        rows[name] = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        rows[name].update({f"{k}_min": min(x[k] for x in rs) for k in rs[0]})
        rows[name].update({f"{k}_max": max(x[k] for x in rs) for k in rs[0]})
    ratios = {}
    for ours, theirs in pairs:
        if theirs in rows:
            a, b = rows[ours], rows[theirs]
            ratios[f"{ours} / {theirs}"] = {
                "steps_per_s": a["steps_per_s"] / b["steps_per_s"],
                "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"],
                "first_step_speedup": b["first_step_s"] / a["first_step_s"],
            }
    json.dump({"case": case, "epochs": int(epochs), "rounds": int(rounds), "rows": rows, "ratios": ratios},
              open(out_json, "w"), indent=2)
    shape = "23 steps per rank, 2 ranks x 1 thread" if ddp else "45 steps, 2 threads"
    print(f"{case}, {epochs} epochs x {shape}, {rounds} interleaved rounds (median, min-max)")
    print("| run | steps/s | peak RSS MB | launch to first step s | all-reduce share of loop |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        share = f"{100 * r['comm_share']:.0f}%" if ddp else "-"
        print(f"| {name} | {r['steps_per_s']:.0f} ({r['steps_per_s_min']:.0f}-{r['steps_per_s_max']:.0f}) | "
              f"{r['peak_rss_mb']:.0f} | {r['first_step_s']:.2f} ({r['first_step_s_min']:.2f}-{r['first_step_s_max']:.2f}) "
              f"| {share} |")
    for name, q in ratios.items():
        print(f"{name}: {q['steps_per_s']:.2f}x steps/s, {q['peak_rss']:.2f}x peak RSS, "
              f"{q['first_step_speedup']:.1f}x faster to the first step")


if __name__ == "__main__":
    main()
