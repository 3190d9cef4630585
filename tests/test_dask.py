"""A real Dask scheduler and two real workers on 127.0.0.1 give the same outputs as a local run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_batch import CSVS, make_study, read_bytes

from cytopipe.batch import run

pytest.importorskip("distributed", reason="the Dask test needs the [dask] extra")


def _dask(*args: str, log: Path) -> subprocess.Popen:
    """``dask scheduler`` / ``dask worker`` as their own process group (so teardown reaches their children)."""
    handle = open(log, "w")  # noqa: SIM115 - closed with the process in the fixture
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """``dask scheduler`` on a free port of 127.0.0.1 and two single-threaded ``dask worker`` processes."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(scheduler_file), log=folder / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        assert scheduler_file.is_file(), "the scheduler did not start within 60 s"
        for i in range(2):
            procs.append(_dask("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                               "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                               "--local-directory", str(folder / f"w{i}"), log=folder / f"worker{i}.log"))
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.mark.slow
def test_dask_cluster_matches_local_run(cluster, tmp_path):
    sheet, gates, labels = make_study(tmp_path / "study", n_files=6, n_events=8_000)
    local = run(sheet=sheet, gates=gates, out=tmp_path / "local", workers=1, quiet=True, stream=io.StringIO(),
                pdf=False)
    log = io.StringIO()
    remote = run(sheet=sheet, gates=gates, out=tmp_path / "dask", scheduler=cluster, log_json=True, stream=log,
                 pdf=False)
    assert remote.exit_code == local.exit_code == 0
    assert read_bytes(tmp_path / "dask") == read_bytes(tmp_path / "local")
    assert sorted(remote.computed) == sorted(labels)
    assert (tmp_path / "dask" / "report.html").is_file()
    assert len(list((tmp_path / "dask" / "plots").glob("gating_*.svg"))) == len(labels)
    assert all(name in CSVS for name in read_bytes(tmp_path / "dask"))


@pytest.mark.slow
def test_dask_isolates_a_corrupt_file(cluster, tmp_path):
    sheet, gates, _ = make_study(tmp_path / "study", n_files=4, n_events=5_000)
    (sheet.parent / "P1_D0.fcs").write_bytes(b"FCS3.1    garbage")
    result = run(sheet=sheet, gates=gates, out=tmp_path / "out", scheduler=cluster, quiet=True,
                 stream=io.StringIO(), plots=False, pdf=False)
    assert result.exit_code == 1
    assert result.failures[["sample", "stage"]].values.tolist() == [["P1_D0", "read"]]
    assert len(result.treg) == 3
