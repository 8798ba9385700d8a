"""Builds the bring-your-own-model tests' files once per machine and torch version, and
prints their folder: the Fashion-MNIST CNN (trained briefly here) and all-MiniLM-L6-v2,
each as an AOTInductor package and a TorchScript module made by volt_export (max batch
16), eager PyTorch's answers to the tests' requests, and broken files made from the
good ones.

AOTInductor compiles CPU packages for the CPU it runs on (-march=native), so nothing is
committed: the cache key is the CPU, the torch version and the sources that make the
files; a lock keeps concurrent test binaries from building twice.

    .python crates/cli/tests/support/byo_fixture.py [CACHE_ROOT]"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[4]
EXAMPLES = REPO / "examples" / "byo"
EXPORTER = REPO / "python" / "volt_export" / "src" / "volt_export"
MAX_BATCH = 16
# Requests of 1, 3 and 8 rows, and one of more rows than a package takes (split).
ROW_COUNTS = [1, 3, 8, 40]
MANY = 500
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "volt serves users' own PyTorch models, batched, with no Python in the serving process.",
]


def cache_key() -> str:
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    seen = set()
    for line in cpuinfo.splitlines():
        field = line.split(":")[0].strip()
        if field in ("model name", "flags") and field not in seen:
            seen.add(field)
            h.update(line.encode())
    for path in sorted([*EXPORTER.glob("*.py"), *EXAMPLES.glob("*.py"), Path(__file__)]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_exporter(*args: str, env: dict | None = None) -> None:
    """`python -m volt_export ARGS`, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": f"{EXAMPLES}{os.pathsep}{EXPORTER.parent}", **(env or {})}
    subprocess.run([sys.executable, "-m", "volt_export", *args], check=True, env=full_env, stdout=sys.stderr)


def cnn_cases(out: Path) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    import fashion_cnn

    torch.set_num_threads(2)
    model, accuracy = fashion_cnn.train(steps=600, batch=64, seed=0)
    torch.save(model.state_dict(), out / "cnn.pth")
    env = {"FASHION_CNN_WEIGHTS": str(out / "cnn.pth")}
    for name in ("cnn.pt2", "cnn.pt"):
        run_exporter("fashion_cnn:make_model", "--out", str(out / name), "--output", "logits",
                     "--name", "fashion_cnn", "--max-batch", str(MAX_BATCH), env=env)
    images, labels = fashion_cnn.load("t10k")
    # A package as a user makes it without volt_export: no metadata, only what
    # AOTInductor records.
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model.eval(), (images[:8],), dynamic_shapes=({0: batch},))
    torch._inductor.aoti_compile_and_package(program, package_path=str(out / "plain.pt2"))
    cases, start = [], 0
    with torch.no_grad():
        for n in ROW_COUNTS:
            x = images[start : start + n]
            cases.append({"inputs": {"image": x.tolist()}, "outputs": {"logits": model(x).tolist()}})
            start += n
        x = images[:MANY]
        # One row at a time, as the concurrent requests each send one.
        many = torch.cat([model(x[i : i + 1]) for i in range(MANY)])
    return {
        "accuracy": accuracy,
        "cases": cases,
        "many": {"image": x.tolist(), "logits": many.tolist(), "labels": labels[:MANY].tolist()},
    }


def minilm_cases(out: Path) -> dict:
    sys.path.insert(0, str(EXAMPLES))
    import minilm_embed
    from transformers import AutoTokenizer

    for name in ("minilm.pt2", "minilm.pt"):
        run_exporter("minilm_embed:make_model", "--out", str(out / name), "--output", "embedding",
                     "--name", "minilm", "--max-batch", str(MAX_BATCH))
    model, _, _ = minilm_embed.make_model()
    tok = AutoTokenizer.from_pretrained(minilm_embed.model_dir())
    cases = []
    with torch.no_grad():
        for n in ROW_COUNTS:
            texts = [SENTENCES[i % len(SENTENCES)] + " " * (i // len(SENTENCES)) + str(i) for i in range(n)]
            enc = tok(texts, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            cases.append({
                "inputs": {"input_ids": ids.tolist(), "attention_mask": mask.tolist()},
                "outputs": {"embedding": model(ids, mask).tolist()},
            })
    return {"cases": cases}


def broken_files(out: Path) -> None:
    """A package that says another torch made it, a truncated one, one with a damaged
    library, and a file that is no package."""
    good = out / "cnn.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out / "other_torch.pt2", "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("wrapper_metadata.json"):
                meta = json.loads(data)
                volt = json.loads(meta["volt"])
                volt["torch_version"] = "2.10.0+cu128"
                meta["volt"] = json.dumps(volt)
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    raw = good.read_bytes()
    (out / "truncated.pt2").write_bytes(raw[: len(raw) // 2])
    with zipfile.ZipFile(good) as z:
        so = next(i for i in z.infolist() if i.filename.endswith(".so"))
    damaged = bytearray(raw)
    middle = so.header_offset + 200 + so.compress_size // 2
    damaged[middle : middle + 64] = bytes(64)
    (out / "damaged.pt2").write_bytes(bytes(damaged))
    (out / "not_a_package.pt2").write_text("these are not the bytes of a zip archive\n")


def build(dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    refs = {"torch_version": torch.__version__, "max_batch": MAX_BATCH,
            "cnn": cnn_cases(tmp), "minilm": minilm_cases(tmp)}
    broken_files(tmp)
    (tmp / "refs.json").write_text(json.dumps(refs))
    os.replace(tmp, dest)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache" / "volt" / "byo")
    root.mkdir(parents=True, exist_ok=True)
    dest = root / cache_key()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "refs.json").exists():
            print(f"byo_fixture: building {dest} (a few minutes, once per CPU and torch)", file=sys.stderr)
            # stdout carries the folder alone.
            with contextlib.redirect_stdout(sys.stderr):
                build(dest)
    print(dest)


if __name__ == "__main__":
    main()
