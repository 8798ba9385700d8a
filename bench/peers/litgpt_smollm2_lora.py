"""smollm2-lora on LitGPT, the peer of `volt fit --model smollm2-lora` in bench/run's
train/smollm2-lora case: LitGPT's own LoRA fine-tuning loop (`litgpt finetune_lora`,
called as `litgpt.finetune.lora.setup(...)`) on SmolLM2-135M-Instruct, the same float32
weights volt trains (a folder `volt lora merge --out DIR` writes from the GGUF file,
converted with `litgpt convert_to_litgpt`), on the very samples volt trains on.

The samples are not LitGPT's prompt style over the text: `HumanEvalChat` below builds
them as crates/zoo/src/instruct.rs does. HumanEval's problems in file order, every fifth
task id (`HumanEval/0`, `/5`, ...) held back for validation; each problem's prompt is the
user's message and its canonical solution the assistant's answer; the prompt is the chat
template's rendering of the user's turn with the assistant's turn opened, the answer what
the whole conversation adds to it (answer, `<|im_end|>`, newline), both rendered by
transformers' apply_chat_template with the folder's template and tokenized with its
tokenizer.json as written (the tokenizer volt builds from the GGUF file), no bos (the
file's `add_bos_token` is false); cut to max_seq_length; labels -100 on the prompt's
tokens (mask_prompt); a record whose prompt alone fills max_seq_length is left out;
batches padded to their longest sample (ids with the lowest end-of-text id, as volt
pads, labels with -100); training batches shuffled, seeded with the run's seed.

Settings, volt's `smollm2-lora` defaults: LoRA r 8, alpha 16, dropout 0.05 on the query
and value projections only; AdamW lr 2e-4, betas (0.9, 0.95), weight decay 0, a constant
learning rate (LitGPT's warm-up + cosine schedule is replaced: volt's has none);
micro batch = global batch (no accumulation); no gradient clipping (LitGPT's LoRA loop
refuses `max_norm`; the volt side runs with `--trainer.gradient_clip_val 0`); seed;
precision 32-true or bf16-mixed; one CPU device, 2 threads; validation every
VAL_INTERVAL steps on VAL_ITERS batches, after a 2-batch sanity check (as volt's).
Left out, as volt does none of it: the sample LitGPT generates after each validation,
the final validation over the whole set, and merging the adapter into a full model
after training (the LoRA weights are still saved). Logging every 5 steps (volt's
log_every_n_steps), CSV logger. (LitGPT's fused query/key/value layer draws one dropout
mask for the query's and the value's adapters; volt draws one per adapter.)

Prints one JSON line: steps, seconds from the end of the first step to the end of
training (validation included), seconds from BENCH_T0 to the end of the first step, the
validation curve [(step, val_loss)], and token counts (real tokens per sample, prompt
included, without padding; and with padding).

Usage: litgpt_smollm2_lora.py MODEL_DIR OUT_DIR MAX_STEPS PRECISION
           [--batch-size 2] [--max-seq-length 256] [--val-interval 50] [--val-iters 20]
           [--seed 0] [--data PATH]
       litgpt_smollm2_lora.py MODEL_DIR --samples [--batch-size ...] [--max-seq-length ...]
           (no LitGPT: prints the sample counts and batch size x the training samples' mean
           length as JSON, and with
           --dump FILE writes every sample's ids and labels as JSON Lines)"""
import argparse
import gzip
import json
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))
# One CPU device, as volt's --trainer.accelerator cpu; also on a machine with a GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

torch.set_num_threads(2)
HERE = os.path.dirname(os.path.abspath(__file__))
HUMANEVAL = os.path.join(HERE, "..", "..", ".humaneval")
IGNORE_INDEX = -100


def problems(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def held_back(task_id):
    n = task_id.rsplit("/", 1)[-1]
    return n.isdigit() and int(n) % 5 == 0


class Encoder:
    """instruct.rs's Encoder over the folder's tokenizer and chat template."""

    def __init__(self, model_dir):
        from transformers import PreTrainedTokenizerFast

        # Not AutoTokenizer: for the folder's `GPT2Tokenizer` class transformers 5 rebuilds
        # GPT-2's pre-tokenizer and drops tokenizer.json's digit split, which changes the ids
        # of whitespace before a digit ("\n    7"); this class keeps tokenizer.json as it is.
        self.tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
        with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
            config = json.load(f)
        self.bos = self.tok.convert_tokens_to_ids(config["bos_token"]) if config.get("add_bos_token") else None
        vocab = self.tok.get_vocab()
        # volt pads with the lowest of the model's end-of-generation ids.
        ends = [vocab[t] for t in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>") if t in vocab]
        self.pad_id = min(ends + [self.tok.convert_tokens_to_ids(config["eos_token"])])

    def ids(self, text):
        ids = self.tok.encode(text, add_special_tokens=False)
        return ([self.bos] if self.bos is not None else []) + ids

    def encode(self, instruction, output, max_len, mask_prompt=True):
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
        prompt = self.tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        full = self.tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the conversation as its prompt + the answer")
        prompt_ids, answer_ids = self.ids(prompt), self.ids(full[len(prompt):])
        if self.bos is not None and answer_ids[:1] == [self.bos]:
            answer_ids = answer_ids[1:]
        ids = (prompt_ids + answer_ids)[: max_len or None]
        labels = [IGNORE_INDEX if mask_prompt and i < len(prompt_ids) else t for i, t in enumerate(ids)]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            return None
        return ids, labels, len(prompt_ids)


def samples(model_dir, data_path, max_len):
    """(train, val, encoder): volt's samples of HumanEval, as lists of (ids, labels, prompt_len)."""
    enc = Encoder(model_dir)
    train, val, dropped = [], [], 0
    for p in problems(data_path):
        s = enc.encode(p["prompt"], p["canonical_solution"], max_len)
        if s is None:
            dropped += 1
        else:
            (val if held_back(p["task_id"]) else train).append(s)
    if dropped:
        print(f"data: {dropped} record(s) left out: the prompt alone fills max_seq_length = {max_len}", file=sys.stderr)
    return train, val, enc


def mean_tokens(train, batch_size):
    return batch_size * sum(len(s[0]) for s in train) / len(train)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("max_steps", nargs="?", type=int)
    ap.add_argument("precision", nargs="?", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--val-interval", type=int, default=50)
    ap.add_argument("--val-iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=HUMANEVAL)
    ap.add_argument("--samples", action="store_true")
    ap.add_argument("--dump")
    a = ap.parse_args()
    model_dir = os.path.abspath(a.model_dir)

    train_samples, val_samples, enc = samples(model_dir, a.data, a.max_seq_length)
    if a.samples:
        if a.dump:
            with open(a.dump, "w") as f:
                for split, rows in (("train", train_samples), ("val", val_samples)):
                    for ids, labels, _ in rows:
                        f.write(json.dumps({"split": split, "ids": ids, "labels": labels}) + "\n")
        print(json.dumps({"train": len(train_samples), "val": len(val_samples), "pad_id": enc.pad_id,
                          "tokens_per_step": mean_tokens(train_samples, a.batch_size)}))
        return
    if a.out_dir is None or a.max_steps is None:
        ap.error("OUT_DIR and MAX_STEPS are needed to train")
    fit(a, model_dir, train_samples, val_samples, enc.pad_id)


def fit(a, model_dir, train_samples, val_samples, pad_id):
    from pathlib import Path

    import litgpt.finetune.lora as lora
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.data import DataModule
    from litgpt.data.base import get_sft_collate_fn
    from litgpt.prompts import SmolLM2

    class Samples(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            ids, labels, prompt_len = self.rows[i]
            return {"input_ids": torch.tensor(ids, dtype=torch.int64), "labels": torch.tensor(labels, dtype=torch.int64),
                    "token_counts": {"raw": max(len(ids) - prompt_len, 0), "raw_plus_prompt_template": len(ids)}}

    class HumanEvalChat(DataModule):
        """volt's HumanEval samples (see the module's doc) as a LitGPT DataModule."""

        def __init__(self):
            super().__init__()
            # Only for the files LitGPT saves beside the adapter; the samples are built above.
            self.prompt_style = SmolLM2()
            self.batch_size = 1

        def connect(self, tokenizer=None, batch_size=1, max_seq_length=None, **kwargs):
            self.batch_size = batch_size

        def setup(self, stage=""):
            self.train_dataset, self.test_dataset = Samples(train_samples), Samples(val_samples)

        def _loader(self, ds, shuffle):
            return torch.utils.data.DataLoader(
                ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=0,
                generator=torch.Generator().manual_seed(a.seed) if shuffle else None,
                collate_fn=get_sft_collate_fn(max_seq_length=-1, pad_id=pad_id, ignore_index=IGNORE_INDEX))

        def train_dataloader(self):
            return self._loader(self.train_dataset, True)

        def val_dataloader(self):
            return self._loader(self.test_dataset, False)

    probe = {"steps": 0, "first": None, "t_first": None, "t_end": None, "curve": [], "tokens": 0, "padded": 0}

    class ConstantLR(torch.optim.lr_scheduler.LambdaLR):
        """volt's smollm2-lora has no schedule; also marks the end of every optimizer step."""

        def __init__(self, optimizer):
            self.live = False
            super().__init__(optimizer, lambda _: 1.0)
            self.live = True

        def step(self, *args, **kwargs):
            super().step(*args, **kwargs)
            if self.live:
                probe["steps"] += 1
                if probe["first"] is None:
                    probe["first"], probe["t_first"] = time.time() - T0, time.perf_counter()

    validate, fit_loop = lora.validate, lora.fit

    def validate_and_record(*args, **kwargs):
        loss = validate(*args, **kwargs)
        if probe["steps"] > 0:   # not the sanity check
            probe["curve"].append([probe["steps"], float(loss)])
        return loss

    def fit_and_time(*args, **kwargs):
        counts = fit_loop(*args, **kwargs)
        probe["t_end"] = time.perf_counter()
        probe["tokens"] = counts["raw_tokens_plus_prompt_template"]
        probe["padded"] = counts["raw_tokens_plus_prompt_template_and_padding"]
        return counts

    def save_settings(_function, checkpoint_dir):
        # LitGPT reads these from its command line, which this script does not have.
        with open(Path(checkpoint_dir) / "hyperparameters.json", "w") as f:
            json.dump(settings, f, indent=2)

    lora.get_lr_scheduler = lambda optimizer, **_: ConstantLR(optimizer)
    lora.validate, lora.fit = validate_and_record, fit_and_time
    lora.generate_example = lambda *args, **kwargs: None
    lora.merge_lora = lambda *args, **kwargs: None
    lora.save_hyperparameters = save_settings

    settings = dict(
        precision=a.precision, devices=1, num_nodes=1,
        lora_r=8, lora_alpha=16, lora_dropout=0.05,
        lora_query=True, lora_key=False, lora_value=True, lora_projection=False, lora_mlp=False, lora_head=False,
        optimizer={"class_path": "torch.optim.AdamW",
                   "init_args": {"lr": 2e-4, "betas": (0.9, 0.95), "weight_decay": 0.0}},
        logger_name="csv", seed=a.seed,
    )
    train = TrainArgs(save_interval=None, log_interval=5, global_batch_size=a.batch_size,
                      micro_batch_size=a.batch_size, lr_warmup_steps=None, epochs=10**6, max_steps=a.max_steps,
                      max_seq_length=a.max_seq_length)
    evaluate = EvalArgs(interval=a.val_interval, max_new_tokens=100, max_iters=a.val_iters,
                        initial_validation=False, final_validation=False)
    lora.setup(checkpoint_dir=Path(model_dir), out_dir=Path(a.out_dir), data=HumanEvalChat(), train=train,
               eval=evaluate, **settings)
    print(json.dumps({"steps": probe["steps"], "train_seconds": probe["t_end"] - probe["t_first"],
                      "first_step_s": probe["first"], "val_curve": probe["curve"],
                      "tokens": probe["tokens"], "padded_tokens": probe["padded"]}))


if __name__ == "__main__":
    main()
