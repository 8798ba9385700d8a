"""digits-mlp on LitServe with batching (max_batch_size 32, batch_timeout 5 ms), the peer
of `volt serve --model digits-mlp` in bench/run's serve/digits-mlp case. It loads the
very checkpoint volt serves (a .safetensors file) into the same PyTorch MLP.
Usage: litserve_digits.py PORT CHECKPOINT"""
import sys

import litserve as ls
import torch
from safetensors.torch import load_file
from torch import nn

torch.set_num_threads(2)


class Digits(ls.LitAPI):
    def __init__(self, checkpoint):
        super().__init__()
        self.checkpoint = checkpoint

    def setup(self, device):
        tensors = load_file(self.checkpoint)
        self.model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        for i, name in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
            self.model[i].weight.data.copy_(tensors[f"model.{name}.weight"])
            self.model[i].bias.data.copy_(tensors[f"model.{name}.bias"])
        self.model.eval()

    def decode_request(self, request):
        return torch.tensor(request["pixels"], dtype=torch.float32) / 16.0

    def batch(self, inputs):
        return torch.stack(inputs)

    @torch.inference_mode()
    def predict(self, x):
        return self.model(x).softmax(-1)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, p):
        return {"digit": int(p.argmax()), "probabilities": p.tolist()}


if __name__ == "__main__":
    port, checkpoint = int(sys.argv[1]), sys.argv[2]
    server = ls.LitServer(Digits(checkpoint), accelerator="cpu", workers_per_device=1, max_batch_size=32, batch_timeout=0.005)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
