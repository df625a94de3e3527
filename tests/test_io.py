"""geopin.io.atomic_path: files appear whole, with the mode a plain open() would give them, even when many
threads write at once (it used to flip the process-wide umask to 0 and back on every write)."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from geopin.io import atomic_path, write_json, write_text


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)  # not the usual 022, so a default-looking mode cannot pass by chance
    yield 0o027
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gets_the_mode_of_a_plain_open(tmp_path, umask_027):
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    write_text("x", tmp_path / "atomic.txt")
    assert _mode(tmp_path / "atomic.txt") == _mode(tmp_path / "plain.txt") == 0o640
    with atomic_path(tmp_path / "failed.txt") as tmp:
        tmp.write_text("half")
        tmp_name = tmp
    assert not tmp_name.exists()  # renamed away
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "failed.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert (tmp_path / "failed.txt").read_text() == "half"  # the earlier complete file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.txt", "failed.txt", "plain.txt"]


ROUNDS = 600


def test_concurrent_atomic_writes_from_threads_keep_the_umask(tmp_path, umask_027):
    """8 threads write ROUNDS files each while 4 more create files with plain open(): every file gets 0o640
    and the umask is still 027 afterwards. With os.umask(0) flipped and restored per write, a thread switch
    between the two calls gave files 0o666 (a thread switch is forced every microsecond here to find it)."""
    expected = 0o666 & ~0o027
    errors: list[str] = []
    stop = threading.Event()

    def atomic_writer(n: int) -> None:
        for i in range(ROUNDS):
            path = tmp_path / f"a-{n}-{i}.json"
            write_json({"n": n, "i": i}, path)
            if _mode(path) != expected:
                errors.append(f"{path.name}: {oct(_mode(path))}")

    def plain_writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            path = tmp_path / f"p-{n}-{i}.txt"
            with open(path, "w") as fh:
                fh.write("x")
            if _mode(path) != expected:
                errors.append(f"{path.name}: {oct(_mode(path))}")
            i += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        writers = [threading.Thread(target=atomic_writer, args=(n,)) for n in range(8)]
        plain = [threading.Thread(target=plain_writer, args=(n,)) for n in range(4)]
        for t in writers + plain:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        for t in plain:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert not errors, f"{len(errors)} files with the wrong mode, e.g. {errors[:5]}"
    assert os.umask(0o027) == 0o027
    assert len(list(tmp_path.glob("a-*.json"))) == 8 * ROUNDS and not list(tmp_path.glob(".*.tmp"))
