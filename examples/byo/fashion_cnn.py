"""A small CNN on Fashion-MNIST (Debian's dataset-fashion-mnist, linked as .fashion-mnist
by scripts/setup), trained in plain PyTorch and served by volt:

    ./.python examples/byo/fashion_cnn.py --out fashion_cnn.pth           # train (15 s on 2 cores)
    FASHION_CNN_WEIGHTS=fashion_cnn.pth PYTHONPATH=examples/byo \
      ./.python -m volt_export fashion_cnn:make_model --output logits --out fashion_cnn.pt2
    volt serve --aoti fashion_cnn.pt2

No torchvision: the images are read from the dataset's IDX files directly."""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import torch
from torch import nn

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class FashionCNN(nn.Module):
    """Two 3x3 convolutions with pooling, then a linear head: images [B, 1, 28, 28] with
    values in 0..1 to logits [B, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def data_dir() -> Path:
    """The dataset's folder: $FASHION_MNIST_DIR, else .fashion-mnist at the repository root."""
    return Path(os.environ.get("FASHION_MNIST_DIR", Path(__file__).resolve().parents[2] / ".fashion-mnist"))


def load(split: str, root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 28, 28] in 0..1 and labels [N] of `train` or `t10k`."""
    root = root or data_dir()
    with gzip.open(root / f"{split}-images-idx3-ubyte.gz") as f:
        raw = f.read()
    if int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError(f"{split}-images-idx3-ubyte.gz is not an IDX image file")
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, 1, rows, cols).float() / 255.0
    with gzip.open(root / f"{split}-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    labels = torch.frombuffer(bytearray(raw[8:]), dtype=torch.uint8).long()
    return images, labels


def make_model() -> tuple[nn.Module, list]:
    """volt_export's factory: the CNN with the weights at $FASHION_CNN_WEIGHTS (random
    ones when unset), and its one input."""
    from volt_export import Input

    model = FashionCNN()
    weights = os.environ.get("FASHION_CNN_WEIGHTS")
    if weights:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), [Input("image", "float32", (1, 28, 28), low=0.0, high=1.0)]


def train(steps: int, batch: int, seed: int) -> tuple[FashionCNN, float]:
    """Adam on the training split; returns the model and its test accuracy."""
    torch.manual_seed(seed)
    images, labels = load("train")
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.4f}")
    model.eval()
    test_images, test_labels = load("t10k")
    with torch.no_grad():
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    return model, accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="fashion_cnn.pth", help="where to write the trained weights")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model, accuracy = train(args.steps, args.batch, args.seed)
    tmp = Path(args.out).with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    print(f"test accuracy {accuracy:.4f} after {args.steps} steps ({time.monotonic() - started:.1f} s); wrote {args.out}")


if __name__ == "__main__":
    main()
