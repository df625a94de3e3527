"""Load test for `geopin serve`: N concurrent clients on loopback, good and bad uploads mixed.

    python bench/bench_serve.py                       # 16 clients, 60 s, 80 % good uploads, 2 explaining
    python bench/bench_serve.py --seconds 10 --clients 4 --bad-fraction 0.5 --explainers 0
    python bench/bench_serve.py --src /tmp/before/src  # the same load on another geopin tree (before/after)

Starts a real `geopin serve` subprocess on 127.0.0.1 (a free port, the bundled model unless --model),
waits for /api/health, then runs the clients for --seconds and stops by itself (the server too).
Good uploads are generated JPEGs (must all get 200); bad ones cycle through a truncated JPEG, text,
a 20000x20000 PNG header (decompression bomb), an empty file, a wrong field name and a body over
the upload limit (each must get its own 4xx). Beside them, --explainers clients ask for occlusion
explanations of good photos in a loop (503 "busy" is their bounded queue saying no: they wait its
Retry-After). Prints requests/s, p50/p95 latency of good uploads,
errors on good uploads (must be 0), statuses of bad ones and the server's peak RSS (VmHWM), and
writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the clients run")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--bad-fraction", type=float, default=0.2, help="share of bad uploads")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--max-upload-mb", type=float, default=2.0, help="the server's upload limit")
    ap.add_argument("--timeout-s", type=float, default=30.0, help="the server's per-request time limit")
    ap.add_argument("--explainers", type=int, default=2, help="clients asking for explanations meanwhile")
    ap.add_argument("--photos", default="shared",
                    help="good uploads: 'shared' (64 shared Im2GPS3k photos; generated ones when absent), 'generated', or a folder")
    ap.add_argument("--text", choices=["auto", "always", "never"], default="auto", help="the server's --text")
    ap.add_argument("--precision", choices=["f32", "int8"], default=None, help="the server's --precision (default: the model's)")
    ap.add_argument("--src", type=Path, default=SRC, help="the geopin source tree the server runs from")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    return ap.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good_photos(photos: str, n: int = 64) -> tuple[list[bytes], str]:
    """What good uploads send, as bytes: `n` shared Im2GPS3k photos drawn at random ("shared", the default when
    they are there: real photos, so the text gate reads as many as it would for users), photos under a folder,
    or ("generated") the landscape-like JPEGs of bench_predict.py."""
    import random
    import tempfile

    if photos != "generated":
        from bench_predict import SHARED

        folder = SHARED if photos == "shared" else Path(photos)
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
        if found:
            chosen = random.Random(0).sample(found, min(n, len(found)))
            return [p.read_bytes() for p in chosen], f"{len(chosen)} photos from {folder}"
        if photos != "shared":
            raise SystemExit(f"--photos {photos}: no JPEG or PNG photos there")

    from bench_predict import (
        generated_photos,  # beside this script: python puts its folder on sys.path
    )

    with tempfile.TemporaryDirectory() as tmp:
        return [p.read_bytes() for p in generated_photos(Path(tmp), 8)], "8 generated landscape-like JPEGs"


def png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_uploads(good: bytes, limit_mb: float) -> list[tuple[str, str, bytes, int]]:
    """(name, field, bytes, expected status)."""
    return [
        ("truncated", "photo", good[: len(good) // 3], 422),
        ("not_an_image", "photo", b"just some text, not a photo\n" * 40, 415),
        ("bomb_header", "photo", png_header_only(20000, 20000), 413),
        ("empty", "photo", b"", 422),
        ("wrong_field", "image", good, 422),
        ("too_large", "photo", b"\xff\xd8" + b"\0" * int(1.2 * limit_mb * 2**20), 413),
    ]


def vm_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from geopin.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--max-upload-mb", str(args.max_upload_mb), "--timeout-s", str(args.timeout_s)]
    if args.text != "auto":  # only when asked: a tree from before the flag (--src) still starts
        cmd += ["--text", args.text]
    if args.precision:
        cmd += ["--precision", args.precision]
    if args.model:
        cmd += ["--model", str(args.model)]
    env = {k: v for k, v in os.environ.items() if k != "GEOPIN_TOKEN"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(args.src), env.get("PYTHONPATH", "")) if x)
    # the server's log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging
    import tempfile

    log = open(Path(tempfile.gettempdir()) / f"geopin-bench-serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, text=True)
    proc.log_path = Path(log.name)
    log.close()  # the child holds its own descriptor
    return proc


def wait_healthy(proc: subprocess.Popen, url: str, limit_s: float = 120.0) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {limit_s:.0f} s")


async def client(i: int, url: str, deadline: float, goods: list[bytes], bads: list, bad_fraction: float,
                 log: list, peak: dict, pid: int) -> None:
    import random

    import httpx

    rng = random.Random(i)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            if rng.random() < bad_fraction:
                name, field, data, want = bads[rng.randrange(len(bads))]
            else:
                name, field, data, want = "good", "photo", goods[rng.randrange(len(goods))], 200
            t = time.perf_counter()
            try:
                r = await http.post("/api/predict", files={field: (f"{name}.jpg", data, "image/jpeg")})
                status, ok_json = r.status_code, _is_json(r)
                err = None if status == 200 else r.text[:200]
                if status == 200 and ok_json and name == "good":
                    peak["text_read"] = peak.get("text_read", 0) + int(bool(r.json().get("text_read")))
            except httpx.HTTPError as exc:
                status, ok_json, err = -1, False, f"{type(exc).__name__}: {exc}"
            log.append((name, want, status, ok_json, (time.perf_counter() - t) * 1e3, err))
            rss = vm_kb(pid, "VmRSS")
            if rss:
                peak["rss_kb"] = max(peak.get("rss_kb", 0), rss)


async def explainer(i: int, url: str, deadline: float, goods: list[bytes], log: list) -> None:
    """Occlusion explanations in a loop; a 503 (the bounded queue is full) waits for its Retry-After."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        n = 0
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                r = await http.post("/api/explain", files={"photo": ("e.jpg", goods[(i + n) % len(goods)], "image/jpeg")},
                                    data={"occlusion": "true"})
                status = r.status_code
                retry = float(r.headers.get("retry-after", "1")) if status == 503 else 0.0
            except httpx.HTTPError:
                status, retry = -1, 1.0
            log.append((status, (time.perf_counter() - t) * 1e3))
            n += 1
            if retry:
                await asyncio.sleep(retry)


def _is_json(r) -> bool:
    try:
        body = r.json()
    except (json.JSONDecodeError, ValueError):
        return False
    return r.status_code == 200 or ("error" in body and "detail" in body)


async def run_clients(args, url: str, pid: int, goods, bads) -> tuple[list, dict, float, list]:
    log: list = []
    explained: list = []
    peak: dict = {}
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    await asyncio.gather(*(client(i, url, deadline, goods, bads, args.bad_fraction, log, peak, pid)
                           for i in range(args.clients)),
                         *(explainer(i, url, deadline, goods, explained) for i in range(args.explainers)))
    return log, peak, time.monotonic() - t0, explained


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def main(argv=None) -> int:
    args = parse_args(argv)
    from geopin.io import write_json

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    goods, goods_source = good_photos(args.photos)
    bads = bad_uploads(goods[0], args.max_upload_mb)
    load_before = os.getloadavg()
    proc = start_server(args, port)
    try:
        startup_s = wait_healthy(proc, url)
        rss_idle = vm_kb(proc.pid, "VmRSS")
        log, peak, wall, explained = asyncio.run(run_clients(args, url, proc.pid, goods, bads))
        hwm = vm_kb(proc.pid, "VmHWM")
        import httpx

        still_up = httpx.get(url + "/api/health", timeout=10).status_code == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    load_after = os.getloadavg()

    good = [x for x in log if x[0] == "good"]
    good_ok = [x for x in good if x[2] == 200 and x[3]]
    good_errors = [x for x in good if not (x[2] == 200 and x[3])]
    bad = [x for x in log if x[0] != "good"]
    bad_by_kind: dict = {}
    for name, want, status, ok_json, _ms, _err in bad:
        k = bad_by_kind.setdefault(name, {"n": 0, "expected_status": want, "statuses": {}, "not_json": 0})
        k["n"] += 1
        k["statuses"][str(status)] = k["statuses"].get(str(status), 0) + 1
        k["not_json"] += 0 if ok_json else 1
    bad_unexpected = sum(1 for x in bad if x[2] != x[1] or not x[3])
    good_ms = [x[4] for x in good_ok]
    result = {
        "benchmark": "geopin serve under load: concurrent clients on loopback, POST /api/predict",
        "clients": args.clients,
        "seconds": round(wall, 1),
        "bad_fraction": args.bad_fraction,
        "requests": len(log),
        "requests_per_s": round(len(log) / wall, 2),
        "good_uploads": len(good),
        "good_photos": goods_source,
        "text": args.text,
        "precision": args.precision,
        "good_read_by_ocr": peak.get("text_read", 0),
        "good_per_s": round(len(good_ok) / wall, 2),
        "good_latency_ms": {"p50": pct(good_ms, 50), "p95": pct(good_ms, 95), "max": pct(good_ms, 100)},
        "errors_on_good_uploads": len(good_errors),
        "first_good_errors": [x[5] for x in good_errors[:5]],
        "explainers": args.explainers,
        "explanations": {"n": len(explained), "ok": sum(1 for st, _ in explained if st == 200),
                         "statuses": {str(k): sum(1 for st, _ in explained if st == k) for k in sorted({st for st, _ in explained})},
                         "latency_ms_ok": {"p50": pct([ms for st, ms in explained if st == 200], 50),
                                           "max": pct([ms for st, ms in explained if st == 200], 100)}},
        "src": str(args.src),
        "bad_uploads": len(bad),
        "bad_with_unexpected_status": bad_unexpected,
        "bad_by_kind": bad_by_kind,
        "server": {
            "startup_s": round(startup_s, 1),
            "rss_idle_mb": round(rss_idle / 1024, 1) if rss_idle else None,
            "rss_peak_sampled_mb": round(peak.get("rss_kb", 0) / 1024, 1),
            "vm_hwm_mb": round(hwm / 1024, 1) if hwm else None,
            "healthy_after": still_up,
            "max_upload_mb": args.max_upload_mb,
        },
        "environment": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
    }
    write_json(result, args.out)
    print(f"{len(log)} requests in {wall:.1f} s from {args.clients} clients: {result['requests_per_s']} req/s "
          f"({result['good_per_s']} good/s)")
    print(f"good uploads: {len(good)}, errors {len(good_errors)}; latency p50 {result['good_latency_ms']['p50']} ms, "
          f"p95 {result['good_latency_ms']['p95']} ms")
    print(f"good photos: {goods_source}; text {args.text}: {result['good_read_by_ocr']} of {len(good_ok)} answered were read by OCR")
    print(f"explanations ({args.explainers} clients): {result['explanations']}")
    print(f"bad uploads: {len(bad)}, with an unexpected status or non-JSON body: {bad_unexpected}")
    for name, k in sorted(bad_by_kind.items()):
        print(f"  {name:13s} n={k['n']:4d} expected {k['expected_status']} got {k['statuses']}")
    print(f"server: started in {startup_s:.1f} s, RSS idle {result['server']['rss_idle_mb']} MB, "
          f"peak (VmHWM) {result['server']['vm_hwm_mb']} MB, healthy after: {still_up}")
    print(f"server log: {proc.log_path}")
    print(f"wrote {args.out}")
    return 0 if not good_errors and not bad_unexpected and still_up else 1


if __name__ == "__main__":
    sys.exit(main())
