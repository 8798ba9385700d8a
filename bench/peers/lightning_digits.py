"""digits-mlp on PyTorch Lightning (mode "lightning"), on Lightning's ddp with 2 CPU
processes over gloo, one thread each (mode "lightning-ddp2"), or in a plain PyTorch loop
(mode "torch"): the Python side of bench/run's train/digits-mlp and
train/digits-mlp-ddp2 cases.

Same as volt's side: the bundled digits (crates/zoo/data/digits.csv.gz), pixels / 16,
an 80/20 split, a 64-256-256-10 ReLU MLP with PyTorch's default initialisation, AdamW
(lr 1e-3, weight decay 0.01), batch 32, shuffled, 2 threads; Lightning with a CSV
logger, a checkpoint every epoch and no progress bar (under ddp: batch 32 per rank,
validation metrics synced, as volt's digits-mlp does). Prints one JSON line (rank 0
only): steps, seconds from the end of the first step to the end of training, seconds
from BENCH_T0 (the harness's launch time) to the end of the first step, and under ddp
the share of the training loop spent in gradient all-reduces (timed by a comm hook from
the bucket's hand-off to the end of its all-reduce).
"""
import argparse
import gzip
import json
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0", time.time()))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

torch.set_num_threads(1 if "lightning-ddp2" in sys.argv else 2)
HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "..", "crates", "zoo", "data", "digits.csv.gz")


def load():
    rows = [list(map(float, line.split(","))) for line in gzip.open(DIGITS, "rt") if line.strip()]
    data = torch.tensor(rows)
    x, y = data[:, :64] / 16.0, data[:, 64].long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(42))
    n_train = len(y) * 4 // 5
    return (x[perm[:n_train]], y[perm[:n_train]]), (x[perm[n_train:]], y[perm[n_train:]])


def mlp():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def loaders():
    (xt, yt), (xv, yv) = load()
    ds = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(ds(xt, yt), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(ds(xv, yv), batch_size=32)
    return train, val


def plain(epochs):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train, _ = loaders()
    steps, first, t_first = 0, None, None
    for _ in range(epochs):
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            steps += 1
            if first is None:
                first, t_first = time.time() - T0, time.perf_counter()
    return steps, time.perf_counter() - t_first, first


def lightning(epochs, out, ddp=False):
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    comm = {"seconds": 0.0}

    def timed_allreduce(_state, bucket):
        # PyTorch's default allreduce hook, timed until the all-reduce completes.
        start = time.perf_counter()
        tensor = bucket.buffer().div_(dist.get_world_size())
        fut = dist.all_reduce(tensor, async_op=True).get_future()

        def done(f):
            comm["seconds"] += time.perf_counter() - start
            return f.value()[0]

        return fut.then(done)

    class Digits(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", F.cross_entropy(logits, y), sync_dist=ddp)
            self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=ddp)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    class FirstStep(Callback):
        first = None
        t_first = None
        steps = 0

        def on_train_batch_end(self, *args):
            FirstStep.steps += 1
            if FirstStep.first is None:
                FirstStep.first, FirstStep.t_first = time.time() - T0, time.perf_counter()

    class LoopTime(Callback):
        def on_train_start(self, trainer, *args):
            if ddp:
                # Lightning registers comm hooks only on CUDA: register it on the DDP
                # wrapper ourselves, before the first backward.
                trainer.strategy.model.register_comm_hook(None, timed_allreduce)
            self.start = time.perf_counter()

        def on_train_end(self, *args):
            self.seconds = time.perf_counter() - self.start

    L.seed_everything(0, verbose=False)
    train, val = loaders()
    loop = LoopTime()
    strategy = DDPStrategy(process_group_backend="gloo") if ddp else "auto"
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=2 if ddp else 1, strategy=strategy, logger=CSVLogger(out),
        callbacks=[ModelCheckpoint(dirpath=os.path.join(out, "checkpoints")), FirstStep(), loop],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Digits(), train, val)
    if trainer.global_rank != 0:
        sys.exit(0)
    share = comm["seconds"] / loop.seconds if ddp else 0.0
    return FirstStep.steps, time.perf_counter() - FirstStep.t_first, FirstStep.first, share


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["lightning", "lightning-ddp2", "torch"], required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="/tmp/bench-lightning")
    a = p.parse_args()
    if a.mode == "torch":
        steps, seconds, first, share = *plain(a.epochs), 0.0
    else:
        steps, seconds, first, share = lightning(a.epochs, a.out, ddp=a.mode == "lightning-ddp2")
    print(json.dumps({"steps": steps, "train_seconds": seconds, "first_step_s": first, "comm_share": share}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
