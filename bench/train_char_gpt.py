"""train/char-gpt: `volt fit --model char-gpt` against PyTorch Lightning training the
same model on the same data (bench/peers/lightning_char_gpt.py), each run its own
process, in turn. Reports training tokens/s (batch 12 x context 64 per step, counted
from the end of the first step to the end of training, validation included on both
sides), peak RSS, launch to the end of the first step, the validation curves and the
final validation loss of each.

Usage: train_char_gpt.py VOLT_BIN PYTHON ROUNDS MAX_STEPS OUT_JSON [--smoke]"""
import csv
import json
import os
import re
import statistics
import sys
import tempfile

from launch import launch

TOKENS_PER_STEP = 12 * 64


def volt(bin_, steps, root):
    out, rss = launch([bin_, "fit", "--model", "char-gpt", "--seed", "0", "--trainer.num_threads", "2",
                    "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", root])
    m = re.search(r"(\d+) steps at ([\d.]+) steps/s", out)
    first = re.search(r"first optimizer step ([\d.]+) s after launch", out)
    curve = []
    with open(os.path.join(root, "char-gpt", "version_0", "metrics.csv")) as f:
        for row in csv.DictReader(f):
            if row.get("val_loss"):
                curve.append([int(row["step"]) + 1, float(row["val_loss"])])
    return {"tokens_per_s": float(m.group(2)) * TOKENS_PER_STEP, "peak_rss_mb": rss, "val_curve": curve,
            "first_step_s": float(first.group(1)) if first else None}


def lightning(python, peer, steps, root):
    out, rss = launch([python, peer, root, str(steps)])
    r = json.loads(out.strip().splitlines()[-1])
    return {"tokens_per_s": (r["steps"] - 1) * TOKENS_PER_STEP / r["train_seconds"], "peak_rss_mb": rss,
            "first_step_s": r["first_step_s"], "val_curve": r["val_curve"]}


def main():
    volt_bin, python, rounds, steps, out_json = sys.argv[1:6]
    smoke = "--smoke" in sys.argv
    peer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "lightning_char_gpt.py")
    runs = {"volt": [], "Lightning": []}
    for r in range(int(rounds)):
        for name in (["volt"] if smoke else ["volt", "Lightning"]):
            print(f"bench: train/char-gpt {name} round {r + 1}", file=sys.stderr)
            root = tempfile.mkdtemp()
            runs[name].append(volt(volt_bin, steps, root) if name == "volt" else lightning(python, peer, steps, root))
    rows = {}
    for name, rs in runs.items():
        if rs:
            rows[name] = {
                "tokens_per_s": statistics.median(x["tokens_per_s"] for x in rs),
                "tokens_per_s_min": min(x["tokens_per_s"] for x in rs),
                "tokens_per_s_max": max(x["tokens_per_s"] for x in rs),
                "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
                "final_val_loss": rs[0]["val_curve"][-1][1] if rs[0]["val_curve"] else None,
                "val_curve": rs[0]["val_curve"],
                "first_step_s": rs[0].get("first_step_s"),
            }
    result = {"case": "train/char-gpt", "max_steps": int(steps), "rounds": int(rounds), "rows": rows}
    if "Lightning" in rows:
        a, b = rows["volt"], rows["Lightning"]
        result["ratio_tokens_per_s"] = a["tokens_per_s"] / b["tokens_per_s"]
        result["val_loss_gap"] = a["final_val_loss"] - b["final_val_loss"]
    json.dump(result, open(out_json, "w"), indent=2)
    print(f"train/char-gpt, {steps} steps x 12 x 64 tokens, 2 threads, {rounds} round(s) (median, min-max)")
    print("| run | tokens/s | peak RSS MB | launch to first step s | final val_loss | val_loss by step |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        curve = " ".join(f"{s}:{v:.3f}" for s, v in r["val_curve"])
        print(f"| {name} | {r['tokens_per_s']:.0f} ({r['tokens_per_s_min']:.0f}-{r['tokens_per_s_max']:.0f}) | "
              f"{r['peak_rss_mb']:.0f} | {r['first_step_s']} | {r['final_val_loss']} | {curve} |")
    if "ratio_tokens_per_s" in result:
        print(f"volt / Lightning: {result['ratio_tokens_per_s']:.2f}x tokens/s; "
              f"val_loss gap {result['val_loss_gap']:+.3f} nats/char")


if __name__ == "__main__":
    main()
