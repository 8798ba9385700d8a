"""char-gpt on PyTorch Lightning, the peer of `volt fit --model char-gpt` in bench/run's
train/char-gpt case: the same data (crates/zoo/data/shakespeare.txt.gz, 90/10 split by
position, vocabulary of the training part), architecture (4 pre-LayerNorm blocks, 4
heads, width 128, context 64, GELU MLP, head tied to the token embedding, nanoGPT's
init), AdamW (1e-3, betas 0.9/0.99, weight decay 0.1), 100 warm-up steps then cosine
decay to 1e-4 at 2,000 steps (volt's formula), clipping at 1.0, batch 12, float32, 2
threads; validation on 200 batches of non-overlapping windows every 250 steps, CSV
logger, best-val_loss checkpoint plus last. Prints one JSON line: steps, seconds from
the end of the first step to the end of training, seconds from BENCH_T0 to the end of
the first step, and the validation curve.
Usage: lightning_char_gpt.py OUT_DIR [MAX_STEPS]"""
import gzip
import json
import math
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

torch.set_num_threads(2)
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "crates", "zoo", "data", "shakespeare.txt.gz")
N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12


def data():
    text = gzip.open(CORPUS, "rt", encoding="ascii").read()
    cut = len(text) * 9 // 10
    chars = sorted(set(text[:cut]))
    index = {c: i for i, c in enumerate(chars)}
    encode = lambda t: torch.tensor([index[c] for c in t if c in index], dtype=torch.long)
    return encode(text[:cut]), encode(text[cut:]), len(chars)


class Windows(torch.utils.data.Dataset):
    def __init__(self, tokens, stride):
        self.tokens, self.stride = tokens, stride

    def __len__(self):
        return (len(self.tokens) - BLOCK - 1) // self.stride + 1

    def __getitem__(self, i):
        w = self.tokens[i * self.stride: i * self.stride + BLOCK + 1]
        return w[:-1], w[1:]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(N_EMBD), nn.LayerNorm(N_EMBD)
        self.qkv, self.proj = nn.Linear(N_EMBD, 3 * N_EMBD), nn.Linear(N_EMBD, N_EMBD)
        self.fc, self.fc_proj = nn.Linear(N_EMBD, 4 * N_EMBD), nn.Linear(4 * N_EMBD, N_EMBD)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, N_HEAD, -1).transpose(1, 2) for y in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.proj(a)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" not in name:
                std = 0.02 / math.sqrt(2 * N_LAYER) if name.endswith(("proj.weight",)) and "qkv" not in name else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.tok.weight.t()


def lr_factor(t, warmup=100, max_steps=2000, base=1e-3, min_lr=1e-4):
    if t < warmup:
        return (t + 1) / (warmup + 1)
    if t >= max_steps:
        return min_lr / base
    coeff = 0.5 * (1 + math.cos(math.pi * (t - warmup) / (max_steps - warmup)))
    return (min_lr + coeff * (base - min_lr)) / base


def main():
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    out = sys.argv[1]
    max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    train_tokens, val_tokens, vocab = data()

    class CharGpt(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Gpt(vocab)

        def loss(self, batch):
            x, y = batch
            return F.cross_entropy(self.model(x).view(-1, vocab), y.view(-1))

        def training_step(self, batch, _):
            loss = self.loss(batch)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", self.loss(batch))

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Probe(Callback):
        first = t_first = None
        curve = []

        def on_train_batch_end(self, *args):
            if Probe.first is None:
                Probe.first, Probe.t_first = time.time() - T0, time.perf_counter()

        def on_validation_end(self, trainer, _):
            if not trainer.sanity_checking:
                Probe.curve.append([trainer.global_step, float(trainer.callback_metrics["val_loss"])])

    L.seed_everything(0, verbose=False)
    train = torch.utils.data.DataLoader(Windows(train_tokens, 1), batch_size=BATCH, shuffle=True, drop_last=True)
    val = torch.utils.data.DataLoader(Windows(val_tokens, BLOCK), batch_size=BATCH, drop_last=True)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=CSVLogger(out), gradient_clip_val=1.0,
        val_check_interval=250, limit_val_batches=200, log_every_n_steps=10,
        callbacks=[ModelCheckpoint(dirpath=os.path.join(out, "checkpoints"), monitor="val_loss", save_last=True),
                   Probe()],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(CharGpt(), train, val)
    seconds = time.perf_counter() - Probe.t_first
    print(json.dumps({"steps": trainer.global_step, "train_seconds": seconds, "first_step_s": Probe.first,
                      "val_curve": Probe.curve}))


if __name__ == "__main__":
    main()
