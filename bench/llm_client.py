"""Streaming load for an LLM's /v1/chat/completions: STREAMS threads, each sending
REQUESTS streamed greedy requests back to back, prompts taken in turn from CORPUS (one
JSON body per line); reports output tokens per second over all streams (content chunks:
both volt and llama-cpp-python send one per token), time to first token and the
inter-token latency (p50, p99).
Usage: llm_client.py URL STREAMS REQUESTS MAX_TOKENS CORPUS"""
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse


def one(url, body):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, (resp.status, resp.read()[:300])
    first, last, tokens, gaps = None, None, 0, []
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            tokens += 1
            if first is None:
                first = now - start
            else:
                gaps.append(now - last)
            last = now
    conn.close()
    return first, tokens, gaps


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def main():
    url, streams, requests, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    corpus = [json.loads(line) for line in open(sys.argv[5]) if line.strip()]
    ttfts, gaps, counts, lock = [], [], [0], threading.Lock()

    def worker(k):
        for n in range(requests):
            body = dict(corpus[(k + n * streams) % len(corpus)], max_tokens=max_tokens, temperature=0,
                        stream=True)
            first, tokens, g = one(url, body)
            with lock:
                ttfts.append(first)
                gaps.extend(g)
                counts[0] += tokens

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = [x for x in ttfts if x is not None]
    print(json.dumps({"streams": streams, "requests": len(ttfts), "tokens": counts[0],
                      "tokens_per_s": counts[0] / wall,
                      "ttft_p50_ms": 1000 * statistics.median(q), "ttft_p99_ms": 1000 * pct(q, 0.99),
                      "itl_p50_ms": 1000 * pct(gaps, 0.5), "itl_p99_ms": 1000 * pct(gaps, 0.99)}))


if __name__ == "__main__":
    main()
