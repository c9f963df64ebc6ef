"""Load check of the studio: 200 concurrent completion requests against a small model.

Starts `sketchlab serve` (a real uvicorn server, in its own process) on a free local port with a
small sketch-rnn (trained here for a few steps on the built-in doodles, or `--model RUN|NAME`),
then sends the requests from one asyncio client:

* burst: 200 requests at once, one try each. The gate admits `workers + queue` model calls and
  answers the rest 429 at once, so every request gets an answer quickly;
* no-model burst: 200 concurrent GET /api/health first: what the client and the machine cost;
* retrying: 200 requests at once, each retried after its Retry-After until it is served (as the
  page's user would press again), so all 200 completions are eventually drawn.

Checks: no 5xx and no dropped connection in either phase; the server's memory (VmRSS, sampled
every 50 ms) stays within `--max-rss-growth-mb` of where it started. Prints JSON (and writes
`$OUT/studio_load.json` when OUT is set): status counts, p50/p95/max latency, requests per
second, the server's memory. Traffic goes to 127.0.0.1 only; every loop is bounded in count and
time. Needs the `studio` extra.

    python benchmarks/studio_load.py [--requests 200] [--workers 2] [--queue 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from report import emit

SMALL = "enc_rnn_size=64,dec_rnn_size=128,z_size=16,max_seq_len=120,batch_size=16,eval_every=0"
# A drawing as the page sends it: a roof and a wall (raw units, the pad's 256 box).
DRAWING = [[[40.0, 90.0, 140.0], [120.0, 60.0, 120.0]],
           [[50.0, 50.0, 130.0, 130.0], [120.0, 200.0, 200.0, 120.0]]]
RUN_CLI = "import sys; from sketchlab.cli import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def train_small(folder: Path) -> Path:
    run = folder / "small-sketch-rnn"
    subprocess.run([sys.executable, "-c", RUN_CLI, "train", "sketch-rnn", "--out", str(run),
                    "--categories", "fish,house", "--max-steps", "20", "--hparams", SMALL,
                    "--no-progress", "--device", "cpu"], check=True, stdout=subprocess.DEVNULL)
    return run


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    v = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(v, 50)), 1),
            "p95_ms": round(float(np.percentile(v, 95)), 1), "max_ms": round(float(v.max()), 1)}


async def one(client: httpx.AsyncClient, body: dict, retry: bool, deadline: float,
              errors: dict) -> dict:
    t0 = time.perf_counter()
    tries = 0
    while True:
        tries += 1
        try:
            r = await client.post("/api/complete", json=body)
            status = r.status_code
            if status == 200:
                ok = len(r.json()["sketches"]) == body["n"]
                status = 200 if ok else -2
        except httpx.HTTPError as e:
            status, r = -1, e
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        if not (retry and status == 429) or time.perf_counter() > deadline or tries >= 1000:
            return {"status": status, "seconds": time.perf_counter() - t0, "tries": tries}
        wait = float(r.headers.get("retry-after", "1")) if isinstance(r, httpx.Response) else 1.0
        await asyncio.sleep(wait * (0.5 + np.random.default_rng(tries).random()))


async def phase(base: str, model: str, n_requests: int, retry: bool, pid: int,
                time_limit: float) -> dict:
    # Idle connections are dropped by the client long before the server's 30 s keep-alive ends,
    # so a request never races the server closing its connection.
    limits = httpx.Limits(max_connections=n_requests + 10, max_keepalive_connections=n_requests,
                          keepalive_expiry=2.0)
    memory, page_s, errors = [], [], {}
    stop = asyncio.Event()

    async def sample_memory():
        while not stop.is_set():
            memory.append(rss_mb(pid))
            await asyncio.sleep(0.05)

    async def load_page():
        # what a person opening the page meanwhile waits for (its own connection)
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     limits=httpx.Limits(keepalive_expiry=2.0)) as page:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    r = await page.get("/api/models")
                    if r.status_code == 200:
                        page_s.append(time.perf_counter() - t)
                    else:
                        errors[f"page {r.status_code}"] = errors.get(f"page {r.status_code}", 0) + 1
                except httpx.HTTPError as e:
                    name = f"page {type(e).__name__}"
                    errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_memory())
    pager = asyncio.create_task(load_page())
    deadline = time.perf_counter() + time_limit
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=time_limit) as client:
        bodies = [{"model": model, "sketch": DRAWING, "n": 2, "temperature": 0.4, "seed": i}
                  for i in range(n_requests)]
        results = await asyncio.gather(*(one(client, b, retry, deadline, errors) for b in bodies))
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    await pager
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    served = [r["seconds"] for r in results if r["status"] == 200]
    answered = [r["seconds"] for r in results]
    return {
        "requests": n_requests, "retry_on_429": retry, "statuses": statuses,
        "served": len(served), "wall_s": round(wall, 2),
        "served_per_s": round(len(served) / wall, 2),
        "latency_served": percentiles(served), "latency_any_answer": percentiles(answered),
        "tries_max": max(r["tries"] for r in results),
        "page_while_loaded": {"requests": len(page_s), **percentiles(page_s)},
        "client_errors": errors,
        "server_rss_peak_mb": round(max(memory), 1) if memory else None,
        "five_xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "dropped": statuses.get("-1", 0), "wrong_answers": statuses.get("-2", 0),
    }


async def no_model_burst(base: str, n_requests: int) -> dict:
    """The same number of concurrent requests that need no model (GET /api/health): what the
    client, the connections and this machine's load alone cost."""
    limits = httpx.Limits(max_connections=n_requests + 10, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def get():
            t = time.perf_counter()
            r = await client.get("/api/health")
            return r.status_code, time.perf_counter() - t
        results = await asyncio.gather(*(get() for _ in range(n_requests)))
    return {"requests": n_requests, "ok": sum(s == 200 for s, _ in results),
            **percentiles([t for _, t in results])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="run directory or zoo name (default: train a "
                                                  "small sketch-rnn for 20 steps)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per phase")
    ap.add_argument("--max-rss-growth-mb", type=float, default=300.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model or str(train_small(Path(tmp)))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", RUN_CLI, "serve", "--models", spec, "--port", str(port),
             "--workers", str(args.workers), "--queue", str(args.queue), "--device", "cpu"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    models = httpx.get(f"{base}/api/models", timeout=2).json()["models"]
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.time() > deadline:
                        print(server.stdout.read() if server.poll() is not None else "timeout",
                              file=sys.stderr)
                        return 1
                    time.sleep(0.3)
            model = next(m for m in models if "complete" in m["actions"])
            # warm up (the first call builds the sampler), then measure from here
            httpx.post(f"{base}/api/complete", json={"model": model["id"], "sketch": DRAWING},
                       timeout=120).raise_for_status()
            rss_start = rss_mb(server.pid)
            baseline = asyncio.run(no_model_burst(base, args.requests))
            burst = asyncio.run(phase(base, model["id"], args.requests, False, server.pid,
                                      args.time_limit))
            retrying = asyncio.run(phase(base, model["id"], args.requests, True, server.pid,
                                         args.time_limit))
            rss_end = rss_mb(server.pid)
            alive = httpx.get(f"{base}/api/health", timeout=5).json()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    peak = max(burst["server_rss_peak_mb"] or 0, retrying["server_rss_peak_mb"] or 0)
    result = {
        "benchmark": "studio_load",
        "model": {"id": model["id"], "kind": model["kind"]},
        "cores": os.cpu_count(), "workers": args.workers, "queue": args.queue,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "no_model_burst": baseline, "burst": burst, "retrying": retrying,
        "server_rss_mb": {"start": round(rss_start, 1), "peak": round(peak, 1),
                          "end": round(rss_end, 1), "growth_peak": round(peak - rss_start, 1)},
        "gate_after": alive["gate"],
    }
    problems = []
    for name, p in (("burst", burst), ("retrying", retrying)):
        if p["five_xx"] or p["dropped"] or p["wrong_answers"] or any(
                k.startswith("page") for k in p["client_errors"]):
            problems.append(f"{name}: {p['statuses']}")
    if retrying["served"] != args.requests:
        problems.append(f"retrying: only {retrying['served']} of {args.requests} served")
    if peak - rss_start > args.max_rss_growth_mb:
        problems.append(f"server memory grew {peak - rss_start:.0f} MB")
    result["ok"] = not problems
    result["problems"] = problems
    emit(result, "studio_load")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
