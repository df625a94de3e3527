"""10,000 photo URLs on a loopback server -> a trained model with one `geopin build`, killed once and resumed.

The issue's done-when, measured: the photos are synthetic (synthetic) and served by a real HTTP
server in this process; a share of the URLs are missing (404), broken (truncated JPEG) or not images
(HTML), and a few rows have bad coordinates. The build runs as a subprocess, is SIGKILLed once while it
downloads, and is rerun to the end. Checked: every URL is in the manifest or the rejects exactly once,
each rejected for the right reason, and no photo that had finished downloading is fetched again.

    python bench/bench_build_urls.py            # 10,000 URLs, about 10 minutes on 2 cores
    python bench/bench_build_urls.py --n 1000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic photos: a test helper
from synthetic import PhotoServer, SyntheticConfig, synthetic_photos  # noqa: E402

log = logging.getLogger("bench_build_urls")
RESULTS = Path(__file__).resolve().parent / "results"


def make_table(server: PhotoServer, table: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, str]]:
    """The URL table, and the reject reason each bad row must end with."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["p", "missing", "broken", "html"], size=len(table), p=[0.97, 0.01, 0.01, 0.01])
    urls = [f"{server.url}/{k}/{name}" for k, name in zip(kinds, table["name"])]
    expected = {}
    for url, kind in zip(urls, kinds):
        if kind != "p":
            expected[url] = {"missing": "download_failed", "broken": "truncated", "html": "not_an_image"}[kind]
    out = pd.DataFrame({"image": urls, "lat": table["lat"], "lon": table["lon"], "author": table["author"]})
    bad = rng.choice(len(out), size=max(1, len(out) // 500), replace=False)
    out.loc[bad, "lat"] = 123.0  # out of range: a coordinate reject, whatever the photo
    for i in bad:
        expected[out.at[i, "image"]] = "coords_out_of_range"
    return out, expected


def run_build(args: list[str], env: dict, kill_when=None, poll_s: float = 0.5) -> tuple[int, float, bool]:
    """Run `geopin build`; when kill_when() turns true, SIGKILL its process group. (returncode, seconds, killed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "geopin", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    while proc.poll() is None:
        if kill_when is not None and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(poll_s)
    _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        log.error("geopin build failed:\n%s", err[-4000:])
    return proc.returncode, time.perf_counter() - t0, killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="photo URLs")
    ap.add_argument("--kill-at", type=float, default=0.5, help="kill when this share of the photos was served")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    work = Path(args.work or tempfile.mkdtemp(prefix="geopin-bench-urls-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    positions, photos = synthetic_photos(SyntheticConfig(n=args.n, n_authors=max(10, args.n // 50), seed=args.seed))
    log.info("%d synthetic photos in %.1f s (%.1f MB)", len(photos), time.perf_counter() - t0,
             sum(map(len, photos.values())) / 1e6)
    env = dict(os.environ, GEOPIN_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1")
    out = work / "build"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    build_args = ["build", str(work / "urls.csv"), "--out", str(out), "--long-side", "224", "--folds", "3",
                  "--inner-folds", "3", "--epochs", "20"]

    with PhotoServer(photos) as server:
        table, expected = make_table(server, positions, args.seed)
        table.to_csv(work / "urls.csv", index=False)
        target = int(args.kill_at * args.n)

        def served() -> int:
            return sum(v for k, v in server.hits.items() if k.startswith("/p/"))

        rc1, s1, killed = run_build(build_args, env, kill_when=lambda: served() >= target)
        hits_at_kill = server.hits
        log.info("first run: killed=%s after %.1f s, %d photo requests served", killed, s1, served())
        rc2, s2, _ = run_build(build_args, env)
        hits = server.hits

    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    rejects = pd.read_parquet(out / "dataset" / "rejects.parquet")
    ids = list(manifest["id"]) + list(rejects["id"])
    accounted = set(ids) == set(table["image"]) and len(ids) == len(table)
    wrong = {u: (r, expected.get(u)) for u, r in zip(rejects["id"], rejects["reason"]) if expected.get(u) != r}
    wrong.update({u: ("kept", expected[u]) for u in manifest["id"] if u in expected})
    refetched = sum(1 for k, v in hits.items() if k.startswith("/p/") and v > 1)
    fetched_before_kill = sum(1 for k, v in hits_at_kill.items() if k.startswith("/p/"))
    build = json.loads((out / "build.json").read_text())
    report_path = out / "eval" / "report.json"
    result = {
        "n_urls": args.n, "killed_during_first_run": killed, "first_run_s": round(s1, 1),
        "resume_run_s": round(s2, 1), "returncode_resume": rc2,
        "photos_served_before_kill": fetched_before_kill,
        "photos_fetched_twice": refetched,
        "kept": len(manifest), "rejected": len(rejects),
        "reject_reasons": rejects["reason"].value_counts().to_dict(),
        "every_url_accounted_once": accounted, "wrong_reasons": len(wrong),
        "stage_seconds": {k: round(v.get("seconds", 0.0), 1) for k, v in build["stages"].items()},
        "evaluation": json.loads(report_path.read_text()).get("scenarios") if report_path.exists() else None,
    }
    if wrong:
        log.error("rows with an unexpected outcome (first 10): %s", list(wrong.items())[:10])
    rows = [("URLs", args.n), ("first run killed after", f"{s1:.0f} s ({fetched_before_kill} photos served)"),
            ("resumed run", f"{s2:.0f} s, exit {rc2}"), ("kept", len(manifest)), ("rejected", len(rejects)),
            ("reasons", ", ".join(f"{k} {v}" for k, v in result["reject_reasons"].items())),
            ("every URL accounted for once", accounted), ("rows with a wrong outcome", len(wrong)),
            ("photos fetched twice", refetched),
            ("stage seconds (resumed run)", ", ".join(f"{k} {v}" for k, v in result["stage_seconds"].items()))]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    summary = out / "eval" / "summary.txt"
    if summary.exists():
        print(summary.read_text())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_build_urls.json").write_text(json.dumps(result, indent=2, default=str))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = killed and rc2 == 0 and accounted and not wrong
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
