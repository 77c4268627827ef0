"""`serve` under load on loopback: requests/s and p50/p99 latency at several concurrencies, the
batched server against one-call-per-request peers measured in the same run; then the batched
server's memory over many requests.

    python bench/serve.py [--levels 1,4,16,64] [--requests 400] [--memory 10000] [--only ...]

The model is a realistic one: the shared MobileNet 0.25 ImageNet weights at 224 px with a
logistic head fitted on a small flowers5 cache (made once under --work). Three servers, each its
own process, take the same JPEG uploads (flowers5 photos):
  batched   `cli.py serve` (defaults: --max-batch 32, --max-wait-ms 5)
  unbatched `cli.py serve --max-batch 1 --max-wait-ms 0`: the same server, one network call per
            request (isolates what batching buys)
  naive     the script teams write: FastAPI, the same network and head, `model.predict` on each
            request in the handler (`naive-server` below)
The client is our own: asyncio, one keep-alive connection per concurrent client, each sending
its next request when the last is answered (bounded: at most `concurrency` in flight).
"""


import argparse
import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
WEIGHTS = os.path.join(SHARED, "weights", "mobilenet_2_5_224_tf_no_top.h5")
FLOWERS = os.path.join(SHARED, "data", "flowers5")
BOUNDARY = "bottleneckbench"


def prepare_model(work: str, per_class: int = 40) -> str:
    """A logistic head on MobileNet 0.25 (224 px) features of `per_class` photos a class, copied
    out of flowers5 (the shared folder stays as it is)."""
    head = os.path.join(work, "head.joblib")
    if os.path.isfile(head):
        return head
    from bottleneck.data.images import class_folders
    from bottleneck.extract import ExtractOptions, run_extract
    from features.heads.run import FitOptions, fit_one

    data = os.path.join(work, "flowers")
    for name in class_folders(FLOWERS):
        os.makedirs(os.path.join(data, name), exist_ok=True)
        for path in sorted(glob.glob(os.path.join(FLOWERS, name, "*.jpg")))[:per_class]:
            shutil.copy(path, os.path.join(data, name))
    cache = os.path.join(work, "flowers.h5")
    run_extract(ExtractOptions(data=data, backbone="mobilenet", alpha=0.25, weights=WEIGHTS,
                               image_size=224, out=cache, progress=False), say=lambda *a: None)
    fit_one("logistic", FitOptions(features=cache, out=head, folds=3), say=lambda *a: None)
    return head


def request_bytes(path: str) -> bytes:
    """One raw HTTP/1.1 POST /predict of the image at `path` (multipart field 'file')."""
    with open(path, "rb") as handle:
        image = handle.read()
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{os.path.basename(path)}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += image + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_response(reader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _load(port: int, requests: list[bytes], n: int, concurrency: int) -> dict:
    """Send n requests over `concurrency` keep-alive connections; latencies and failures."""
    latencies, failed, left = [], [0], [n]

    async def client(k: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while left[0] > 0:
            left[0] -= 1
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            await writer.drain()
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            failed[0] += status != 200
            i += concurrency
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"seconds": time.perf_counter() - started, "latencies": latencies,
            "failed": failed[0]}


def measure(port: int, requests: list[bytes], n: int, concurrency: int) -> dict:
    warm = max(concurrency, min(n // 4, 2 * concurrency))
    asyncio.run(_load(port, requests, warm, concurrency))   # warm the connections and batch sizes
    run = asyncio.run(_load(port, requests, n, concurrency))
    ms = sorted(1000 * t for t in run["latencies"])
    return {"concurrency": concurrency, "requests": n, "failed": run["failed"],
            "rps": round(n / run["seconds"], 1), "p50_ms": round(ms[len(ms) // 2], 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(argv: list[str], port: int, log: str):
    """A server process started with `argv`, once it answers /health; its pid."""
    import urllib.request

    with open(log, "w") as out:
        proc = subprocess.Popen(argv + ["--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited; see {log}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            time.sleep(0.5)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(60)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return int(re.search(r"VmRSS:\s*(\d+)", handle.read()).group(1)) / 1024


def servers(head: str) -> dict:
    cli = [sys.executable, os.path.join(ROOT, "cli.py"), "serve", "--model", head]
    return {"naive": [sys.executable, os.path.abspath(__file__), "naive-server", "--model", head],
            "unbatched": cli + ["--max-batch", "1", "--max-wait-ms", "0"],
            "batched": cli}


def throughput(head: str, requests: list[bytes], levels, counts: dict, work: str) -> list[dict]:
    """Every server at every level, `counts[server]` requests each; the servers run one at a
    time (the others are stopped)."""
    rows = []
    for name, argv in servers(head).items():
        if name not in counts:
            continue
        with server(argv, port := free_port(), os.path.join(work, f"{name}.log")):
            for c in levels:
                row = {"server": name, **measure(port, requests, counts[name], c)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def memory(head: str, requests: list[bytes], total: int, work: str, concurrency: int = 16):
    """The batched server's resident memory after a warm-up tenth and after `total` requests."""
    with server(servers(head)["batched"], port := free_port(),
                os.path.join(work, "memory.log")) as pid:
        warm = total // 10
        measure(port, requests, warm, concurrency)
        before = rss_mb(pid)
        run = measure(port, requests, total - warm, concurrency)
        after = rss_mb(pid)
    return {"requests": total, "concurrency": concurrency, "rss_after_warmup_mb": round(before, 1),
            "rss_after_all_mb": round(after, 1), "growth_pct": round(100 * (after / before - 1), 2),
            "failed": run["failed"], "rps": run["rps"]}


def ratios(rows: list[dict]) -> list[dict]:
    by = {(r["server"], r["concurrency"]): r for r in rows}
    out = []
    for (name, c), row in by.items():
        if name == "batched":
            out.append({"concurrency": c, **{f"batched_vs_{peer}": round(row["rps"] / by[peer, c][
                "rps"], 2) for peer in ("naive", "unbatched") if (peer, c) in by}})
    return out


def naive_server(model: str, port: int) -> None:
    """The per-request script: FastAPI, the head's network and head, `model.predict` per call."""
    import uvicorn
    from fastapi import FastAPI, File, UploadFile

    from bottleneck.backbones.network import feature_model_from_provenance
    from bottleneck.data.images import image_from_bytes
    from bottleneck.predict.base import head_features, top_classes
    from features.heads.headfile import load_head

    bundle = load_head(model)
    prov, pipeline = bundle["provenance"], bundle["pipeline"]
    network, _ = feature_model_from_provenance(prov, fold_bn=True)
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)):  # noqa: B008 - the script as people write it
        images, _ = image_from_bytes(file.file.read(), (prov.image_size,))
        outputs = network.predict(images[0][None], verbose=0)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        proba = pipeline.predict_proba(head_features(outputs, prov))[0]
        return {"top_k": top_classes(proba, list(prov.class_names), 3)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    if sys.argv[1:2] == ["naive-server"]:
        p = argparse.ArgumentParser()
        p.add_argument("naive_server")
        p.add_argument("--model", required=True)
        p.add_argument("--port", type=int, required=True)
        a = p.parse_args()
        return naive_server(a.model, a.port)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default="/tmp/bottleneck-bench-serve",
                   help="where the model and logs go (the model is made once)")
    p.add_argument("--levels", default="1,4,16,64", help="concurrencies, comma-separated")
    p.add_argument("--requests", type=int, default=400,
                   help="requests per level for the batched and unbatched servers")
    p.add_argument("--naive-requests", type=int, default=120,
                   help="requests per level for the naive script (it is far slower)")
    p.add_argument("--servers", default="naive,unbatched,batched", help="which to measure")
    p.add_argument("--memory", type=int, default=10_000, help="requests of the memory run")
    p.add_argument("--only", choices=("throughput", "memory"), default=None)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = p.parse_args()
    if not os.path.isfile(WEIGHTS):
        sys.exit(f"needs {WEIGHTS} and {FLOWERS} (../shared)")
    os.makedirs(args.work, exist_ok=True)
    head = prepare_model(args.work)
    photos = sorted(glob.glob(os.path.join(FLOWERS, "*", "*.jpg")))[::63][:64]   # all classes
    requests = [request_bytes(p) for p in photos]
    result = {"cpu": _cpu(), "load_before": os.getloadavg()}
    if args.only != "memory":
        counts = {name: args.naive_requests if name == "naive" else args.requests
                  for name in args.servers.split(",")}
        result["throughput"] = throughput(head, requests, [int(c) for c in args.levels.split(",")],
                                          counts, args.work)
        result["ratios"] = ratios(result["throughput"])
        for row in result["ratios"]:
            print(json.dumps(row))
    if args.only != "throughput":
        result["memory"] = memory(head, requests, args.memory, args.work)
        print(json.dumps(result["memory"]))
    result["load_after"] = os.getloadavg()
    print(json.dumps({"cpu": result["cpu"], "load_before": result["load_before"],
                      "load_after": result["load_after"]}))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


def _cpu() -> str:
    from bottleneck.cpu import cpu_info

    return cpu_info()[0]


if __name__ == "__main__":
    main()
