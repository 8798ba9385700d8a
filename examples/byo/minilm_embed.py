"""all-MiniLM-L6-v2 (transformers' BertModel, linked as .minilm by scripts/setup) as a
tensor model for volt: token ids and attention mask in, the sentence embedding out (mean
pooling over the mask, then L2 normalisation, as sentence-transformers' pipeline for this
model does). Clients tokenize; volt runs the network.

    MINILM_DIR=.minilm PYTHONPATH=examples/byo ./.python -m volt_export \
      minilm_embed:make_model --out minilm.pt2
    volt serve --aoti minilm.pt2"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VOCAB = 30522
MAX_TOKENS = 256  # sentence-transformers truncates this model's inputs at 256 tokens


class MiniLMEmbed(nn.Module):
    """BertModel with sentence-transformers' mean pooling and normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def model_dir() -> Path:
    """$MINILM_DIR, else .minilm at the repository root."""
    return Path(os.environ.get("MINILM_DIR", Path(__file__).resolve().parents[2] / ".minilm"))


def load() -> MiniLMEmbed:
    """The model, from $MINILM_DIR, in eval mode."""
    from transformers import AutoModel

    return MiniLMEmbed(AutoModel.from_pretrained(model_dir(), attn_implementation="eager")).eval()


def make_model() -> tuple[nn.Module, list, dict]:
    """volt_export's factory: the model, its two inputs (one sequence dimension, `seq`,
    from 2 tokens, [CLS] and [SEP], to 256), and that dimension's range."""
    from volt_export import DimRange, Input

    inputs = [
        Input("input_ids", "int64", ("seq",), low=0, high=VOCAB),
        Input("attention_mask", "int64", ("seq",), low=0, high=2),
    ]
    return load(), inputs, {"seq": DimRange(2, MAX_TOKENS)}
