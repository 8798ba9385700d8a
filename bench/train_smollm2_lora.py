"""train/smollm2-lora: `volt fit --model smollm2-lora` against LitGPT's LoRA fine-tuning
(`litgpt finetune_lora`'s loop, bench/peers/litgpt_smollm2_lora.py) of the same model
(SmolLM2-135M-Instruct, the same float32 weights) on the same samples (HumanEval, volt's
chat-template rendering and split; the peer's ids were checked against volt's) with the
same settings, at 32-true and bf16-mixed, each run its own process, interleaved (volt
32-true, LitGPT 32-true, volt bf16-mixed, LitGPT bf16-mixed, then again).

Settings, volt's `smollm2-lora` defaults on both sides: LoRA r 8, alpha 16, dropout 0.05
on q_proj and v_proj; AdamW 2e-4, betas (0.9, 0.95), no weight decay, constant learning
rate; batch 2 (no accumulation), samples cut at 256 tokens; seed 0; one CPU device, 2
threads; validation every VAL_INTERVAL steps on VAL_BATCHES batches. No gradient
clipping on either side: LitGPT's LoRA loop refuses `max_norm`, so volt runs with
`--trainer.gradient_clip_val 0` (its default clips at 1.0).

Reports, per side and precision: steps/s and training tokens/s (from the end of the
first optimizer step to the end of fit, validation included, on both sides; median and
min-max over rounds), peak RSS, launch to the end of the first optimizer step, the
validation curve and the final validation loss, and volt's val_loss minus LitGPT's at
each common step. Tokens per step: the real (unpadded) tokens of a batch, prompt
included, taken as batch size x the mean length of the training samples (the same
number for both sides; their shuffles differ, so neither runs exactly that many); the
peer's JSON also has the real and padded tokens LitGPT actually ran. volt's own rate line
has one decimal, too coarse at ~1 step/s: its run is timed from its stdout instead (the
end of the first step from its "first optimizer step ... after launch" line, the end of
fit from when its "fit finished" line is read).

Usage: train_smollm2_lora.py VOLT_BIN PYTHON ROUNDS MAX_STEPS OUT_JSON [--smoke]
           [--model-dir DIR] [--val-interval N] [--val-batches N] [--precisions 32-true,bf16-mixed]
PYTHON: LitGPT's venv's python; DIR: the Hugging Face folder `volt lora merge --out`
wrote, converted by `litgpt convert_to_litgpt` (LitGPT's side and the token count need
it). --smoke runs volt's side only, one precision (the first of --precisions)."""
import argparse
import csv
import json
import os
import re
import statistics
import sys
import tempfile

from launch import launch, launch_lines

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peers", "litgpt_smollm2_lora.py")
BATCH, MAX_SEQ = 2, 256
GAP_TOLERANCE = 0.05


def volt(bin_, steps, precision, val_interval, val_batches, root):
    lines, rss = launch_lines([
        bin_, "fit", "--model", "smollm2-lora", "--seed", "0",
        "--data.max_seq_length", str(MAX_SEQ), "--data.batch_size", str(BATCH),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(val_interval),
        "--trainer.limit_val_batches", str(val_batches), "--trainer.num_threads", "2",
        "--trainer.precision", precision, "--trainer.accelerator", "cpu", "--trainer.gradient_clip_val", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", root])
    out = "\n".join(line for _, line in lines)
    steps_done = int(re.search(r"(\d+) steps at [\d.]+ steps/s", out).group(1))
    first = float(re.search(r"first optimizer step ([\d.]+) s after launch", out).group(1))
    fit_end = next(t for t, line in lines if line.startswith("fit finished"))
    curve = []
    with open(os.path.join(root, "smollm2", "version_0", "metrics.csv")) as f:
        for row in csv.DictReader(f):
            if row.get("val_loss"):
                curve.append([int(float(row["step"])) + 1, float(row["val_loss"])])
    return {"steps": steps_done, "train_seconds": fit_end - first, "first_step_s": first, "peak_rss_mb": rss,
            "val_curve": curve}


def litgpt(python, model_dir, steps, precision, val_interval, val_batches, root):
    out, rss = launch([python, PEER, model_dir, root, str(steps), precision, "--batch-size", str(BATCH),
                       "--max-seq-length", str(MAX_SEQ), "--val-interval", str(val_interval),
                       "--val-iters", str(val_batches)])
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss_mb"] = rss
    return r


def summary(rs, tokens_per_step):
    rates = [(x["steps"] - 1) / x["train_seconds"] for x in rs]
    row = {
        "steps": rs[0]["steps"],
        "steps_per_s": statistics.median(rates), "steps_per_s_min": min(rates), "steps_per_s_max": max(rates),
        "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
        "first_step_s": statistics.median(x["first_step_s"] for x in rs),
        "val_curve": rs[0]["val_curve"],
        "final_val_loss": rs[0]["val_curve"][-1][1] if rs[0]["val_curve"] else None,
    }
    if tokens_per_step:
        for k in ("", "_min", "_max"):
            row["tokens_per_s" + k] = row["steps_per_s" + k] * tokens_per_step
    if "tokens" in rs[0]:
        row["litgpt_tokens"], row["litgpt_padded_tokens"] = rs[0]["tokens"], rs[0]["padded_tokens"]
    return row


def main():
    ap = argparse.ArgumentParser()
    for name in ("volt_bin", "python", "rounds", "max_steps", "out_json"):
        ap.add_argument(name)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model-dir")
    ap.add_argument("--val-interval", type=int)
    ap.add_argument("--val-batches", type=int, default=20)
    ap.add_argument("--precisions", default="32-true,bf16-mixed")
    a = ap.parse_args()
    rounds, steps = int(a.rounds), int(a.max_steps)
    val_interval = a.val_interval or max(1, min(50, steps // 2))
    precisions = a.precisions.split(",")[:1] if a.smoke else a.precisions.split(",")
    if not a.smoke and not a.model_dir:
        sys.exit("train_smollm2_lora.py: LitGPT's side needs --model-dir")
    volt_bin, out_json = os.path.abspath(a.volt_bin), os.path.abspath(a.out_json)
    model_dir = a.model_dir and os.path.abspath(a.model_dir)
    # volt finds the model (.smollm2) and the data (.humaneval) in the repository root.
    os.chdir(os.path.join(HERE, ".."))
    tokens_per_step = None
    if model_dir:
        out, _ = launch([a.python, PEER, model_dir, "--samples", "--batch-size", str(BATCH),
                         "--max-seq-length", str(MAX_SEQ)])
        tokens_per_step = json.loads(out.strip().splitlines()[-1])["tokens_per_step"]

    sides = [("volt", p) for p in precisions] if a.smoke else [(s, p) for p in precisions for s in ("volt", "LitGPT")]
    runs = {f"{s} {p}": [] for s, p in sides}
    for r in range(rounds):
        for side, p in sides:
            print(f"bench: train/smollm2-lora {side} {p} round {r + 1}", file=sys.stderr)
            root = tempfile.mkdtemp()
            runs[f"{side} {p}"].append(
                volt(volt_bin, steps, p, val_interval, a.val_batches, root) if side == "volt"
                else litgpt(a.python, model_dir, steps, p, val_interval, a.val_batches, root))
    rows = {name: summary(rs, tokens_per_step) for name, rs in runs.items() if rs}
    result = {"case": "train/smollm2-lora", "max_steps": steps, "rounds": rounds, "batch_size": BATCH,
              "max_seq_length": MAX_SEQ, "val_check_interval": val_interval, "limit_val_batches": a.val_batches,
              "tokens_per_step": tokens_per_step, "rows": rows, "compare": {}}
    for p in precisions:
        v, l = rows.get(f"volt {p}"), rows.get(f"LitGPT {p}")
        if not (v and l):
            continue
        theirs = dict(map(tuple, l["val_curve"]))
        gaps = [[s, loss - theirs[s]] for s, loss in v["val_curve"] if s in theirs]
        result["compare"][p] = {
            "ratio_steps_per_s": v["steps_per_s"] / l["steps_per_s"],
            "val_loss_gap_by_step": gaps,
            "final_val_loss_gap": gaps[-1][1] if gaps else None,
            "within_tolerance": bool(gaps) and all(abs(g) <= GAP_TOLERANCE for _, g in gaps),
        }
    json.dump(result, open(out_json, "w"), indent=2)

    tokens = f"{tokens_per_step:.0f} real tokens per step" if tokens_per_step else "tokens per step not counted"
    print(f"train/smollm2-lora, {steps} steps x batch {BATCH} (samples cut at {MAX_SEQ}; {tokens}), "
          f"validation every {val_interval} steps on {a.val_batches} batches, 2 threads, {rounds} round(s) "
          "(median, min-max)")
    print("| run | steps/s | tokens/s | peak RSS MB | launch to first step s | final val_loss | val_loss by step |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        curve = " ".join(f"{s}:{v:.3f}" for s, v in r["val_curve"])
        tps = (f"{r['tokens_per_s']:.0f} ({r['tokens_per_s_min']:.0f}-{r['tokens_per_s_max']:.0f})"
               if tokens_per_step else "-")
        final = f"{r['final_val_loss']:.4f}" if r["final_val_loss"] is not None else "-"
        print(f"| {name} | {r['steps_per_s']:.3f} ({r['steps_per_s_min']:.3f}-{r['steps_per_s_max']:.3f}) | {tps} | "
              f"{r['peak_rss_mb']:.0f} | {r['first_step_s']:.2f} | {final} | {curve} |")
    for p, c in result["compare"].items():
        gaps = " ".join(f"{s}:{g:+.4f}" for s, g in c["val_loss_gap_by_step"])
        verdict = "within" if c["within_tolerance"] else "NOT within"
        print(f"{p}: volt / LitGPT {c['ratio_steps_per_s']:.2f}x tokens/s; val_loss gap (volt - LitGPT) {gaps} "
              f"({verdict} {GAP_TOLERANCE})")


if __name__ == "__main__":
    main()
