"""all-MiniLM-L6-v2 on LitServe + sentence-transformers behind LitServe's
OpenAIEmbeddingSpec (/v1/embeddings), the peer of `volt serve --model minilm` in
bench/run's serve/minilm case: the same model folder, 2 torch threads, one input per
request, batching on. MAX_BATCH and BATCH_TIMEOUT_MS default to the best of the sweep
that `bench/run serve/minilm-sweep` runs (docs/benchmarks.md).
Usage: litserve_minilm.py PORT MODEL_DIR [MAX_BATCH] [BATCH_TIMEOUT_MS]"""
import sys

import litserve as ls
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)


class MiniLM(ls.LitAPI):
    def __init__(self, model_dir, **kwargs):
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device):
        self.model = SentenceTransformer(self.model_dir, device="cpu")

    def predict(self, texts):
        # A batch of single inputs (the spec decodes each request to its input).
        return self.model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True)

    def unbatch(self, output):
        return list(output)


if __name__ == "__main__":
    port, model_dir = int(sys.argv[1]), sys.argv[2]
    max_batch = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    timeout = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    api = MiniLM(model_dir, max_batch_size=max_batch, batch_timeout=timeout, spec=ls.OpenAIEmbeddingSpec())
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
