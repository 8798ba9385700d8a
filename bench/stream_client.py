"""Streaming load for /v1/chat/completions: STREAMS threads, each sending streamed
requests back to back for SECONDS; reports generated characters (chunks with content)
per second over all streams and the time to first token (p50, p99).
Usage: stream_client.py URL STREAMS SECONDS MAX_TOKENS"""
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse


def one(url, max_tokens, seed):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    body = json.dumps({"model": "char-gpt", "messages": [{"role": "user", "content": "ROMEO:\n"}],
                       "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "stream": True})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    first, tokens = None, 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if first is None:
                first = time.perf_counter() - start
    conn.close()
    return first, tokens


def main():
    url, streams, seconds, max_tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    ttfts, counts, lock = [], [0], threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(k):
        n = 0
        while time.perf_counter() < deadline:
            first, tokens = one(url, max_tokens, k * 1000 + n)
            n += 1
            with lock:
                ttfts.append(first)
                counts[0] += tokens

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = sorted(x for x in ttfts if x is not None)
    print(json.dumps({"streams": streams, "requests": len(ttfts), "tokens_per_s": counts[0] / wall,
                      "ttft_p50_ms": 1000 * statistics.median(q), "ttft_p99_ms": 1000 * q[min(len(q) - 1, int(len(q) * 0.99))]}))


if __name__ == "__main__":
    main()
