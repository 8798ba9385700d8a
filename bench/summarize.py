"""Parses wrk --latency outputs, reports medians (min-max) and ratios, writes JSON and a
Markdown table. Usage: summarize.py CASE OUT_JSON RUN_DIR"""
import json
import os
import platform
import re
import statistics
import sys
import time

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"), "non_2xx": int(errors.group(1)) if errors else 0}


def main():
    case, out_json, run_dir = sys.argv[1:4]
    runs = {}
    for name in sorted(os.listdir(run_dir)):
        m = re.match(r"(.+)__c(\d+)__r(\d+)\.txt$", name)
        if m:
            server, conns = m.group(1), int(m.group(2))
            runs.setdefault((server, conns), []).append(parse(os.path.join(run_dir, name)))
    rows = []
    for (server, conns), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None)
        rows.append({
            "server": server, "connections": conns, "rounds": len(rs),
            "rps": med("rps"), "rps_min": min(r["rps"] for r in rs), "rps_max": max(r["rps"] for r in rs),
            "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "non_2xx": sum(r["non_2xx"] for r in rs),
        })
    extra = {}
    for name in os.listdir(run_dir):
        if name.endswith((".start.json", ".rss.json")):
            d = json.load(open(os.path.join(run_dir, name)))
            extra.setdefault(d.pop("server"), {}).update(d)
        m = re.match(r"(.+)__single\.txt$", name)
        if m:
            # One connection, one short input back to back: single-request latency.
            extra.setdefault(m.group(1), {})["single_p50_ms"] = parse(os.path.join(run_dir, name))["p50_ms"]
    for r in rows:
        r.update(extra.get(r["server"], {}))
    by = {(r["server"], r["connections"]): r for r in rows}
    for r in rows:
        for peer in ("litserve", "litserve-compile", "axum-bare"):
            p = by.get((peer, r["connections"]))
            if r["server"].startswith("volt") and p:
                r[f"rps_vs_{peer}"] = r["rps"] / p["rps"]
                r[f"p99_vs_{peer}"] = r["p99_ms"] / p["p99_ms"]
    result = {
        "case": case,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cores": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version()},
        "rows": rows,
    }
    json.dump(result, open(out_json, "w"), indent=2)
    print("| server | conns | req/s median (min-max) | p50 ms | p99 ms | non-2xx | peak RSS MB | launch to first answer s | volt/peer req/s | volt/peer p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratios = " ".join(f"{k[7:]}: {v:.2f}x" for k, v in r.items() if k.startswith("rps_vs_"))
        p99r = " ".join(f"{k[7:]}: {v:.3f}x" for k, v in r.items() if k.startswith("p99_vs_"))
        print(f"| {r['server']} | {r['connections']} | {r['rps']:.0f} ({r['rps_min']:.0f}-{r['rps_max']:.0f}) | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} | {r.get('peak_rss_mb', '')} | "
              f"{r.get('first_served_s', '')} | {ratios} | {p99r} |")
    for server, d in sorted(extra.items()):
        if "single_p50_ms" in d:
            print(f"{server}: single request (one connection, a 12-token input) p50 {d['single_p50_ms']:.2f} ms")


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
