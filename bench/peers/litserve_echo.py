"""The echo API of the serving benchmark on LitServe, with its documented defaults and
one worker: {"input": x} -> {"output": x}."""
import sys

import litserve as ls


class Echo(ls.LitAPI):
    def setup(self, device):
        pass

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        return x

    def encode_response(self, output):
        return {"output": output}


if __name__ == "__main__":
    port = int(sys.argv[1])
    server = ls.LitServer(Echo(), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
