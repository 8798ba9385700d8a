"""The peer of `volt serve --aoti` in bench/run's serve/byo case: the same PyTorch model
(examples/byo), eager or under torch.compile, on LitServe with batching (max_batch_size
32, batch_timeout 5 ms, as volt's side), speaking volt's tensor JSON
(`{"inputs": ...}` in, `{"outputs": ...}` out) so that both get the same bodies.
Usage: litserve_byo.py PORT cnn WEIGHTS [--compile]
       litserve_byo.py PORT minilm MODEL_DIR [--compile]"""
import os
import sys

import litserve as ls
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "byo"))

torch.set_num_threads(2)


class TensorAPI(ls.LitAPI):
    def __init__(self, which, path, compile_model, **kwargs):
        super().__init__(**kwargs)
        self.which, self.path, self.compile_model = which, path, compile_model

    def setup(self, device):
        if self.which == "cnn":
            import fashion_cnn

            self.model = fashion_cnn.FashionCNN()
            self.model.load_state_dict(torch.load(self.path, weights_only=True))
        else:
            os.environ["MINILM_DIR"] = self.path
            import minilm_embed

            self.model = minilm_embed.load()
        self.model.eval()
        if self.compile_model:
            self.model = torch.compile(self.model)

    def decode_request(self, request):
        inputs = request["inputs"]
        if self.which == "cnn":
            # One input: bare, or named as volt's API also takes it.
            image = inputs["image"] if isinstance(inputs, dict) else inputs
            return (torch.tensor(image, dtype=torch.float32),)
        return (torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"]))

    def batch(self, inputs):
        # Requests may carry several rows and, for MiniLM, other lengths: pad and concatenate.
        self.rows = [x[0].shape[0] for x in inputs]
        if self.which == "cnn":
            return (torch.cat([x[0] for x in inputs]),)
        longest = max(x[0].shape[1] for x in inputs)
        pad = lambda t: torch.nn.functional.pad(t, (0, longest - t.shape[1]))
        return tuple(torch.cat([pad(x[k]) for x in inputs]) for k in range(2))

    @torch.inference_mode()
    def predict(self, x):
        return self.model(*x)

    def unbatch(self, output):
        return list(torch.split(output, self.rows))

    def encode_response(self, output):
        return {"outputs": output.tolist()}


if __name__ == "__main__":
    port, which, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    api = TensorAPI(which, path, "--compile" in sys.argv[4:], max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
