"""char-gpt on LitServe's OpenAISpec (/v1/chat/completions, streaming), the peer of
`volt serve --model char-gpt` in bench/run's serve/char-gpt-stream case. It loads the
very checkpoint volt serves (a .safetensors file) into the PyTorch model of
lightning_char_gpt.py and generates as nanoGPT's `generate` does: each character
re-runs the model on the last 64 characters (no KV cache), sampling with temperature,
top-k and the request's seed; 2 torch threads; LitServe's defaults otherwise.
Usage: litserve_char_gpt.py PORT CHECKPOINT"""
import os
import sys

import litserve as ls
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lightning_char_gpt import BLOCK, Gpt, data  # noqa: E402

torch.set_num_threads(2)


class CharGptApi(ls.LitAPI):
    def __init__(self, checkpoint, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint = checkpoint

    def setup(self, device):
        import gzip
        from lightning_char_gpt import CORPUS

        text = gzip.open(CORPUS, "rt", encoding="ascii").read()
        self.chars = sorted(set(text[: len(text) * 9 // 10]))
        self.index = {c: i for i, c in enumerate(self.chars)}
        tensors = load_file(self.checkpoint)
        self.model = Gpt(len(self.chars))
        self.model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self.model.eval()

    @torch.inference_mode()
    def predict(self, request):
        prompt = "\n".join(m.content for m in request.messages) or "\n"
        ids = [self.index[c] for c in prompt if c in self.index]
        gen = torch.Generator().manual_seed(getattr(request, "seed", None) or 0)
        temperature = request.temperature if request.temperature is not None else 1.0
        for _ in range(request.max_tokens or 256):
            logits = self.model(torch.tensor([ids[-BLOCK:]]))[0, -1]
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                nxt = int(torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=gen))
            ids.append(nxt)
            yield self.chars[nxt]


if __name__ == "__main__":
    port, checkpoint = int(sys.argv[1]), sys.argv[2]
    server = ls.LitServer(CharGptApi(checkpoint, spec=ls.OpenAISpec()), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
