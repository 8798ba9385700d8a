"""SmolLM2-135M-Instruct on LitServe's OpenAISpec (/v1/chat/completions, streaming)
with Hugging Face transformers, the peer of `volt serve --gguf` in bench/run's
serve/smollm2 case: what a Python LitServe user runs for the same GGUF file.
transformers reads the GGUF file (through the gguf package) and, as it does with every
GGUF file, dequantizes its Q4_1 weights, here to float32; the tokenizer and its chat
template come from the same file. 2 torch threads.

Batching: LitServe's own, which OpenAISpec accepts with max_batch_size > 1 (predict
gets the batch's requests and yields one piece per request and step). It is static
batching: the worker gathers requests for BATCH_TIMEOUT_MS (50; a lone request waits up
to that long) or until it has MAX_BATCH (16, like volt's --max-num-seqs and
llama-server's --parallel), left-pads them into one batch, prefills it and decodes it
with a KV cache (transformers 5's `cache`, once past_key_values), one forward per token
for the whole batch. A request that comes meanwhile waits for the batch to end, and a
sequence that ends early (end of turn) stays open, sending empty deltas, until the
batch's longest one is done. MAX_BATCH 1 serves one request at a time (LitServe's plain
streaming loop).

Each generated token is one content chunk (text decoded incrementally; the bytes of an
unfinished UTF-8 character wait for the next token), as volt and llama.cpp send them,
and the last chunk carries usage. Greedy when temperature is 0.
Usage: litserve_smollm2.py PORT GGUF_PATH [MAX_BATCH] [BATCH_TIMEOUT_MS]"""
import os
import sys

import litserve as ls
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)


class SmolLM2Api(ls.LitAPI):
    def __init__(self, gguf, **kwargs):
        super().__init__(**kwargs)
        self.gguf = gguf

    def setup(self, device):
        torch.set_num_threads(2)
        folder, name = os.path.split(os.path.abspath(self.gguf))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, requests):
        # A list when batching (max_batch_size > 1), one request otherwise.
        if isinstance(requests, list):
            yield from self.generate(requests)
        else:
            for pieces in self.generate([requests]):
                yield pieces[0]

    @torch.inference_mode()
    def generate(self, requests):
        prompts = [
            self.tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in r.messages],
                                               add_generation_prompt=True, tokenize=True, return_dict=False)
            for r in requests
        ]
        limits = [r.max_completion_tokens or r.max_tokens or 256 for r in requests]
        temps = [r.temperature if r.temperature is not None else 0.7 for r in requests]
        n, width = len(prompts), max(map(len, prompts))
        # Left padding, so that every sequence's next token comes from the last column.
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        lengths = mask.sum(-1)
        generated = [[] for _ in range(n)]
        sent = [""] * n
        done = [False] * n
        cache = None
        while True:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits[:, -1].float()
            pieces, nxt = [], []
            for i in range(n):
                if done[i]:
                    pieces.append("")
                    nxt.append(self.pad)
                    continue
                if temps[i] <= 0:
                    token = int(logits[i].argmax())
                else:
                    token = int(torch.multinomial(torch.softmax(logits[i] / temps[i], -1), 1))
                nxt.append(token)
                piece = ""
                if token in self.eos:
                    done[i] = True
                else:
                    generated[i].append(token)
                    text = self.tokenizer.decode(generated[i], skip_special_tokens=True)
                    if not text.endswith("\ufffd"):
                        piece, sent[i] = text[len(sent[i]):], text
                    done[i] = len(generated[i]) >= limits[i]
                pieces.append(piece)
            yield pieces
            if all(done):
                break
            ids = torch.tensor(nxt).unsqueeze(1)
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], 1)
            positions = lengths.unsqueeze(1)
            lengths = lengths + 1
        yield [{"prompt_tokens": len(p), "completion_tokens": len(g), "total_tokens": len(p) + len(g)}
               for p, g in zip(prompts, generated)]

    def encode_response(self, outputs):
        def message(o):   # a text piece, or the usage at the end
            return {"role": "assistant", "content": "", **o} if isinstance(o, dict) else {"role": "assistant", "content": o}

        for o in outputs:
            yield [message(x) for x in o] if isinstance(o, list) else message(o)


if __name__ == "__main__":
    port, gguf = int(sys.argv[1]), sys.argv[2]
    max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    timeout = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.05
    api = SmolLM2Api(gguf, max_batch_size=max_batch, batch_timeout=timeout, spec=ls.OpenAISpec())
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
