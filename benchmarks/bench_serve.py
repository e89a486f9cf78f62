"""How does ``dgstudy serve`` hold up under concurrent requests, and how much memory does it take?

Starts ``python -m dgstudy serve --model RUN`` on 127.0.0.1 in a subprocess (``--run`` if given,
else ``results/osie-efficientnet_lite0`` or ``results/smoke-efficientnet_lite0`` if trained, else a
tiny run trained here: see ``bench_predict.py``), then sends ``--rounds`` rounds of
``--concurrency`` simultaneous ``POST /predict`` requests with OSIE images (800x600 JPEGs; from the
OSIE mirror, else synthetic images of that size). Prints the start-up time, per round the wall
time, the latencies, the status codes and the server's resident memory (VmRSS after the round,
VmHWM the peak so far). Results are kept in memory up to the server's ``Limits.result_bytes``
(256 MiB), so the memory levels off once that many results (about 100 OSIE images) are kept.

    .venv/bin/python benchmarks/bench_serve.py [--run results/<run>] [--rounds 6] [--concurrency 20]
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_predict import build_tiny_run, find_run  # noqa: E402

OSIE_STIMULI = Path(os.environ.get("DGSTUDY_OSIE_DIR", REPO.parent / "shared" / "datasets" / "osie")) / "stimuli"


def images(n: int) -> list[tuple[str, bytes]]:
    files = sorted(OSIE_STIMULI.glob("*.jpg"))[:n]
    if len(files) == n:
        return [(f.name, f.read_bytes()) for f in files]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(buf, "jpeg")
        out.append((f"synthetic{i}.jpg", buf.getvalue()))
    return out


def memory_mib(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    run = find_run(args.run) or build_tiny_run(Path(tmp.name))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dgstudy", "serve", "--model", str(run), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"dgstudy serve exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        startup = time.perf_counter() - t0
        batch = images(args.concurrency)
        print(f"model {run}; {len(batch)} images ({batch[0][0]}, ...), "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        print(f"start-up (process start to /health answering, model loaded): {startup:.1f} s")
        with httpx.Client(base_url=url, timeout=600) as c:
            c.post("/predict", files={"image": batch[0]})
            m = memory_mib(proc.pid)
            print(f"after one request: RSS {m['VmRSS']:.0f} MiB")

            def one(item):
                t = time.perf_counter()
                r = c.post("/predict", files={"image": item})
                return r.status_code, time.perf_counter() - t

            print(f"{'round':>5} {'requests':>8} {'wall s':>7} {'img/s':>6} {'lat min':>8} {'median':>7} "
                  f"{'max':>6} {'status':>10} {'RSS MiB':>8} {'peak MiB':>9} {'kept':>5}")
            for k in range(args.rounds):
                t = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    answers = list(pool.map(one, batch))
                wall = time.perf_counter() - t
                codes = sorted({a[0] for a in answers})
                lat = np.array([a[1] for a in answers])
                m = memory_mib(proc.pid)
                kept = c.get("/health").json()["results_kept"]
                print(f"{k + 1:>5} {len(answers):>8} {wall:>7.1f} {len(answers) / wall:>6.2f} {lat.min():>8.2f} "
                      f"{np.median(lat):>7.2f} {lat.max():>6.2f} {','.join(map(str, codes)):>10} "
                      f"{m['VmRSS']:>8.0f} {m['VmHWM']:>9.0f} {kept:>5}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        tmp.cleanup()


if __name__ == "__main__":
    main()
