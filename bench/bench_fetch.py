"""Download throughput of `geopin.dataset.fetch` from a loopback HTTP server, beside the alternatives.

    python bench/bench_fetch.py                      # geopin.dataset.fetch: cold, then a rerun (all from the ledger)
    python bench/bench_fetch.py --photos 2000 --workers 16
    python bench/bench_fetch.py --img2dataset-python /tmp/venv/bin/python   # + img2dataset in that venv
    python bench/bench_fetch.py --fsspec-http-python /tmp/venv/bin/python   # + fsspec HTTPFileSystem (aiohttp)

The server (http.server, threaded) runs in its own process and serves N small generated JPEGs plus
5 % missing ones (404), so each client pays for errors as in real tables. The alternatives run in a
throwaway venv given by path: they are measured, not installed into the project. Prints a table and
writes bench/results/fetch.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_SERVER = textwrap.dedent("""
    import io, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from PIL import Image
    n = int(sys.argv[1])
    photos = {}
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (128, 96), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buf, "JPEG", quality=85)
        photos[f"/p/{i}.jpg"] = buf.getvalue()
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers do: no 40 ms wait between the headers and the body
        def log_message(self, *a): pass
        def do_GET(self):
            body = photos.get(self.path)
            code = 200 if body is not None else 404
            body = body if body is not None else b"missing"
            self.send_response(code); self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        do_HEAD = do_GET
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H); srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    srv.serve_forever()
""")

_IMG2DATASET = textwrap.dedent("""
    import json, sys, time, glob
    import pandas as pd
    from img2dataset import download
    urls, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t0 = time.perf_counter()
    download(url_list=urls, input_format="txt", output_folder=out, output_format="files", processes_count=1,
             thread_count=threads, disable_all_reencoding=True, retries=1, timeout=10, number_sample_per_shard=10000,
             enable_wandb=False, compute_hash="sha256", verify_hash=None)
    wall = time.perf_counter() - t0
    st = pd.concat([pd.read_parquet(p) for p in glob.glob(out + "/*.parquet")])
    print(json.dumps({"seconds": wall, "ok": int((st.status == "success").sum()),
                      "errors": st.error_message.dropna().astype(str).str[:40].value_counts().head(3).to_dict()}))
""")

_FSSPEC_HTTP = textwrap.dedent("""
    import json, sys, time
    import fsspec
    urls = open(sys.argv[1]).read().split()
    fs = fsspec.filesystem("http")
    t0 = time.perf_counter()
    out = fs.cat(urls, on_error="return")   # batched, concurrent on one asyncio loop
    wall = time.perf_counter() - t0
    ok = sum(isinstance(v, bytes) for v in out.values())
    print(json.dumps({"seconds": wall, "ok": ok,
                      "errors": sorted({type(v).__name__ for v in out.values() if not isinstance(v, bytes)})}))
""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--img2dataset-python", type=Path, help="a venv's python with img2dataset installed")
    parser.add_argument("--fsspec-http-python", type=Path, help="a venv's python with fsspec + aiohttp")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fetch.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from geopin.dataset.fetch import FetchConfig, fetch_urls
    from geopin.io import write_json

    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(args.photos)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # clients closing keep-alive sockets: noise
    try:
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}"
        n_missing = max(1, args.photos // 20)
        urls = [f"{base}/p/{i}.jpg" for i in range(args.photos)] + [f"{base}/missing/{i}.jpg" for i in range(n_missing)]
        rows = []
        with tempfile.TemporaryDirectory(prefix="geopin-bench-fetch-") as tmp:
            cfg = FetchConfig(workers=args.workers, retries=1, backoff_s=0.1)
            t0 = time.perf_counter()
            results, _ = fetch_urls(urls, Path(tmp) / "store", cfg)
            cold = time.perf_counter() - t0
            rows.append({"client": f"geopin.dataset.fetch (requests, {args.workers} threads)", "urls": len(urls),
                         "ok": sum(r.ok for r in results.values()), "seconds": round(cold, 2),
                         "urls_per_s": round(len(urls) / cold, 1)})
            t0 = time.perf_counter()
            results2, summary2 = fetch_urls(urls, Path(tmp) / "store", cfg)
            warm = time.perf_counter() - t0
            rows.append({"client": f"geopin.dataset.fetch rerun ({summary2.n_fetched} fetched, rest from the ledger)",
                         "urls": len(urls), "ok": sum(r.ok for r in results2.values()), "seconds": round(warm, 2),
                         "urls_per_s": round(len(urls) / warm, 1)})
            url_file = Path(tmp) / "urls.txt"
            url_file.write_text("\n".join(urls) + "\n")
            for name, python, script, extra in (
                    (f"img2dataset (1 process, {args.workers} threads, no re-encoding)", args.img2dataset_python,
                     _IMG2DATASET, [str(Path(tmp) / "i2d"), str(args.workers)]),
                    ("fsspec HTTPFileSystem.cat (aiohttp)", args.fsspec_http_python, _FSSPEC_HTTP, [])):
                if python is None:
                    continue
                proc = subprocess.run([str(python), "-c", script, str(url_file), *extra], capture_output=True,
                                      text=True, timeout=600, check=False)
                if proc.returncode:
                    rows.append({"client": name, "error": proc.stderr.strip().splitlines()[-1][:200]})
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"client": name, "urls": len(urls), "ok": res["ok"], "seconds": round(res["seconds"], 2),
                             "urls_per_s": round(len(urls) / res["seconds"], 1), "errors": res["errors"]})
    finally:
        server.kill()
        server.wait()

    print(f"{'client':<62} {'urls':>6} {'ok':>6} {'s':>7} {'urls/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['client']:<62} failed: {r['error']}")
        else:
            print(f"{r['client']:<62} {r['urls']:>6} {r['ok']:>6} {r['seconds']:>7.2f} {r['urls_per_s']:>8.1f}")
    write_json({"photos": args.photos, "missing": n_missing, "workers": args.workers, "rows": rows,
                "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2),
                "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
