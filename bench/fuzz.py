"""Coverage-guided fuzzing of geopin's parsers of untrusted input (issue 13, item 14).

    pip install -e '.[fuzz]'     # atheris (libFuzzer for Python); without it --engine random is used
    python bench/fuzz.py [--seconds 160] [--targets exif,csv,parquet,ingest,decode] [--engine atheris|random]

Each target runs in its own process for `--seconds` under libFuzzer (through atheris), starting from
real files (the seeds of tests/fuzzing.py) and checking the same contracts as tests/test_fuzz.py:

    exif     read_exif_gps on a JPEG or PNG whose EXIF block is the fuzzed bytes
    csv      read_table on the fuzzed bytes as a .csv file
    parquet  read_table on the fuzzed bytes as a .parquet file
    ingest   ingest() of the fuzzed bytes as a .csv table next to two real photos
    decode   decode_rgb on the fuzzed bytes (every format Pillow reads), pixel limit 2^20

An input that breaks a contract (any exception other than the documented one) is saved once per
distinct place it was raised, under bench/results/fuzz_crashes/, and fuzzing goes on. libFuzzer itself
stops a target on a hard crash (segfault), an input slower than --timeout seconds or memory above
--rss-limit-mb; those inputs are saved too. Prints a table and writes bench/results/fuzz.json:
per target, how many inputs were tried, for how long, the outcomes and what broke.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
RESULTS = HERE / "results"
CRASHES = RESULTS / "fuzz_crashes"

#: target -> (modules whose Python code atheris instruments for coverage, max input length in bytes)
TARGETS: dict[str, tuple[list[str], int]] = {
    "exif": (["geopin", "PIL"], 4096),
    "csv": (["geopin"], 4096),  # pandas' Python layers instrumented ran at 22 inputs/s: the C parser does the work
    "parquet": (["geopin", "pyarrow.pandas_compat"], 8192),
    "ingest": (["geopin"], 2048),
    "decode": (["geopin", "PIL"], 16384),
}
DECODE_MAX_PIXELS = 1 << 20
SLOW_SECONDS = 2.0  # an input slower than this is reported (libFuzzer's --timeout kills a real hang)


# ---------------------------------------------------------------------------------------------
# child: one target under atheris (or the random engine)


class Harness:
    """Runs one target on each input, counts outcomes, keeps the inputs that break the contract."""

    def __init__(self, target: str, work: Path, stats_path: Path) -> None:
        import fuzzing  # tests/fuzzing.py, imported under instrumentation by the caller

        self.fuzzing = fuzzing
        self.target, self.work, self.stats_path = target, work, stats_path
        self.runs = 0
        self.outcomes: collections.Counter = collections.Counter()
        self.findings: dict[str, dict] = {}
        self.slow: list[dict] = []
        self.started = time.perf_counter()
        self.last_write = 0.0
        self.photos = work / "photos"
        if target == "ingest":
            self.photos.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.new("RGB", (80, 64), (120, 90, 40)).save(self.photos / "a.jpg")
            Image.new("RGB", (70, 70), (20, 90, 140)).save(self.photos / "b.jpg")

    def seeds(self) -> list[bytes]:
        f = self.fuzzing
        tables = f.table_seeds()
        if self.target == "exif":
            return f.exif_seeds()
        if self.target == "csv":
            return [v for k, v in tables.items() if k.endswith(".csv")]
        if self.target == "parquet":
            return [v for k, v in tables.items() if k.endswith(".parquet")]
        if self.target == "ingest":
            return [b"image,lat,lon,author\na.jpg,48.85,2.29,ann\nb.jpg,-33.9,151.2,bob\nc.jpg,1,2,\n",
                    b"\xef\xbb\xbfimage,lat,lon\r\n\"a.jpg\",10,20\r\nb.jpg,91,0\r\n"]
        return list(f.image_seeds().values())

    def run_one(self, data: bytes) -> None:
        self.runs += 1
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns on every corrupt tag; expected here
                outcome = self._call(data)
        except Exception as exc:  # noqa: BLE001 - any other exception is exactly what we are looking for
            self._finding(data, exc)
            outcome = "CONTRACT BROKEN"
        self.outcomes[outcome] += 1
        took = time.perf_counter() - started
        if took > SLOW_SECONDS and len(self.slow) < 20:
            digest = self._save(data, "slow")
            self.slow.append({"seconds": round(took, 2), "input": digest})
        if time.perf_counter() - self.last_write > 2.0:
            self.write_stats()

    def _call(self, data: bytes) -> str:
        f, work = self.fuzzing, self.work
        if self.target == "exif":
            png = data[:1] == b"\x01"  # first byte picks the container; the rest is the EXIF block
            body = data[1:] if data[:1] in (b"\x00", b"\x01") else data
            path = work / ("in.png" if png else "in.jpg")
            path.write_bytes(f.png_with_exif_payload(body) if png else f.jpeg_with_exif_payload(body))
            return f.exif_contract(path)
        if self.target in ("csv", "parquet"):
            path = work / f"in.{self.target}"
            path.write_bytes(data)
            return f.table_contract(path)
        if self.target == "ingest":
            table = self.photos / "t.csv"
            table.write_bytes(data)
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            return f.ingest_contract(table, out)
        return f.decode_contract(data, DECODE_MAX_PIXELS)

    def _finding(self, data: bytes, exc: Exception) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        where = f"{Path(last.filename).name}:{last.lineno} in {last.name}" if last else "?"
        signature = f"{type(exc).__name__} at {where}"
        if signature in self.findings:
            self.findings[signature]["count"] += 1
            return
        digest = self._save(data, "crash")
        text = "".join(traceback.format_exception(exc))
        (CRASHES / f"{self.target}-crash-{digest}.txt").write_text(text)
        self.findings[signature] = {"count": 1, "exception": type(exc).__name__, "where": where,
                                    "message": str(exc)[:300], "input": f"{self.target}-crash-{digest}.bin"}

    def _save(self, data: bytes, kind: str) -> str:
        digest = hashlib.sha1(data).hexdigest()[:12]
        CRASHES.mkdir(parents=True, exist_ok=True)
        (CRASHES / f"{self.target}-{kind}-{digest}.bin").write_bytes(data)
        return digest

    def write_stats(self) -> None:
        from geopin.io import write_json

        self.last_write = time.perf_counter()
        write_json({"target": self.target, "runs": self.runs,
                    "seconds": round(self.last_write - self.started, 1),
                    "outcomes": dict(self.outcomes.most_common()), "findings": self.findings,
                    "slow": self.slow}, self.stats_path)


def child(target: str, engine: str, seconds: float, work: Path, libfuzzer_args: list[str]) -> None:
    sys.path.insert(0, str(TESTS))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    stats_path = work / "stats.json"
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=TARGETS[target][0]):
            harness = Harness(target, work, stats_path)
            import geopin.dataset.images  # noqa: F401 - imported here so it is instrumented too
    else:
        harness = Harness(target, work, stats_path)
    for i, seed in enumerate(harness.seeds()):
        (corpus / f"seed-{i:02d}").write_bytes(seed)
    if engine == "atheris":
        def test_one_input(data: bytes) -> None:
            harness.run_one(data)
            if time.perf_counter() - harness.started > seconds - 1.5:
                harness.write_stats()  # libFuzzer ends the process with exit(): write the last numbers now

        atheris.Setup([sys.argv[0], *libfuzzer_args, str(corpus)], test_one_input)
        atheris.Fuzz()
    else:
        random_engine(harness, seconds)
    harness.write_stats()


def random_engine(harness: Harness, seconds: float) -> None:
    """No atheris: mutate the seeds at random with tests/fuzzing.mutate (what hypothesis does, longer)."""
    import random

    rng = random.Random(0)
    seeds = harness.seeds()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        ops = [(rng.randrange(6), rng.randrange(1 << 16), rng.randrange(1 << 32)) for _ in range(rng.randint(1, 6))]
        harness.run_one(harness.fuzzing.mutate(rng.choice(seeds), ops))


# ---------------------------------------------------------------------------------------------
# parent: run every target, collect, report


def run_target(target: str, args: argparse.Namespace, scratch: Path) -> dict:
    work = scratch / target
    work.mkdir(parents=True, exist_ok=True)
    artifacts = work / "artifacts"
    artifacts.mkdir(exist_ok=True)
    max_len = TARGETS[target][1]
    lf = [f"-max_total_time={int(args.seconds)}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
          f"-max_len={max_len}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-seed=1"]
    cmd = [sys.executable, __file__, "--child", target, "--engine", args.engine, "--seconds", str(args.seconds),
           "--work", str(work), "--", *lf]
    log_path = work / "fuzzer.log"
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                              timeout=args.seconds + 300, check=False)
    wall = time.perf_counter() - started
    stats = json.loads((work / "stats.json").read_text()) if (work / "stats.json").exists() else {}
    log_text = log_path.read_text(errors="replace")
    result = {"target": target, "engine": args.engine, "seconds": round(wall, 1), "exit_code": proc.returncode,
              "runs": stats.get("runs", 0), "outcomes": stats.get("outcomes", {}),
              "findings": stats.get("findings", {}), "slow_inputs": stats.get("slow", [])}
    done = re.findall(r"Done (\d+) runs in (\d+) second", log_text)
    if done:
        result["runs"] = max(result["runs"], int(done[-1][0]))
    cov = re.findall(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", log_text)
    if cov:
        result["coverage_edges"], result["features"], result["corpus"] = map(int, cov[-1])
    rss = re.findall(r"rss: (\d+)Mb", log_text)
    if rss:
        result["peak_rss_mb"] = max(map(int, rss))
    hard = []
    for artifact in sorted(artifacts.iterdir()):  # libFuzzer's own: crash-*, timeout-*, oom-*, slow-unit-*
        CRASHES.mkdir(parents=True, exist_ok=True)
        kept = CRASHES / f"{target}-{artifact.name}"
        shutil.copyfile(artifact, kept)
        hard.append(kept.name)
    result["libfuzzer_artifacts"] = hard
    if proc.returncode not in (0,) and not hard:
        result["log_tail"] = log_text[-2000:]
    result["inputs_per_s"] = round(result["runs"] / wall, 1) if wall else 0.0
    return result


def print_table(results: list[dict]) -> None:
    head = ("target", "engine", "seconds", "inputs", "inputs/s", "cov", "broke", "libFuzzer stops", "top outcomes")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in list(r["outcomes"].items())[:4])
        broke = sum(f["count"] for f in r["findings"].values())
        print(f"| {r['target']} | {r['engine']} | {r['seconds']:.0f} | {r['runs']:,} | {r['inputs_per_s']:,.0f} | "
              f"{r.get('coverage_edges', '-')} | {broke} ({len(r['findings'])} distinct) | "
              f"{len(r['libfuzzer_artifacts'])} | {outcomes} |")
    for r in results:
        for signature, f in r["findings"].items():
            print(f"  {r['target']}: {signature} x{f['count']}: {f['message'][:120]} -> {f['input']}")
        for name in r["libfuzzer_artifacts"]:
            print(f"  {r['target']}: libFuzzer stopped on {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=160.0, help="per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--engine", choices=("atheris", "random"), default=None,
                        help="default: atheris when installed, else random mutation")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before libFuzzer stops")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine is None:
        try:
            import atheris  # noqa: F401
            args.engine = "atheris"
        except ImportError:
            args.engine = "random"
    if args.child:
        child(args.child, args.engine, args.seconds, args.work, args.libfuzzer)
        return

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="geopin-fuzz-") as scratch:
        for target in targets:
            print(f"fuzzing {target} for {args.seconds:.0f} s with {args.engine} ...", file=sys.stderr, flush=True)
            results.append(run_target(target, args, Path(scratch)))
    print_table(results)

    from importlib.metadata import version

    from geopin.io import write_json

    packages = {name: version(name) for name in ("pillow", "pandas", "pyarrow", "piexif")}
    if args.engine == "atheris":
        packages["atheris"] = version("atheris")
    for r in results:
        r["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    kept = []  # a run of some targets keeps the other targets' last results
    if args.out.exists():
        ran = {r["target"] for r in results}
        kept = [r for r in json.loads(args.out.read_text()).get("targets", []) if r.get("target") not in ran]
    merged = sorted(kept + results, key=lambda r: list(TARGETS).index(r["target"]) if r["target"] in TARGETS else 99)
    write_json({"timeout_s": args.timeout, "rss_limit_mb": args.rss_limit_mb, "python": platform.python_version(),
                "packages": packages, "cpus": os.cpu_count(),
                "total_inputs": sum(r["runs"] for r in merged),
                "total_seconds": round(sum(r["seconds"] for r in merged), 1), "targets": merged}, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
