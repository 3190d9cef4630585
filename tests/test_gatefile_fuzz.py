"""Hostile input, property-based: mutated gate files (YAML and Gating-ML), sample sheets and clinical tables.

Like ``test_fcs_fuzz.py`` for FCS files: seeded, derandomized Hypothesis runs mutate the shipped gate files, their
Gating-ML conversions, a sample sheet and a clinical table (hostile values in place of numbers and names, YAML
anchors and aliases, deep nesting, duplicated, deleted and truncated lines, random characters). Every mutated input
is read by a long-lived worker process that runs under a memory cap (``RLIMIT_DATA`` = 512 MB + 8x the largest
input, one BLAS thread); for each input the read must

* succeed, or raise a :class:`~cytopipe.errors.CytopipeError` whose message is one line (anything else is a bug,
  reported with its traceback);
* finish within :data:`MAX_SECONDS` (the worker is killed and the test fails otherwise);
* never exhaust the memory cap (a MemoryError is a bug).
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = 250
MAX_SECONDS = 5.0
MAX_INPUT = 256 * 1024

HOSTILE = (
    "0", "-1", "1e400", "-1e400", "nan", ".nan", ".inf", "-.inf", "1e-320", "9" * 5000, "0x1F", "0o17", "1_000",
    "~", "null", "[]", "{}", "[[[[[[[[]]]]]]]]", "&a [1, 2]", "*a", "&b [*b]", "'", '"', "\\", "=cmd|' /C calc'!A0",
    "\x00", "\x1b[2J", "\u202e", "true", "yes", "CD52", "FSC-A", "-", "+", "? [a]: 1", "!!python/object:os.system",
    "!!binary AAAA", "<<: *a", "%YAML 1.1", "---", "...",
)  # fmt: skip
WORKER = r"""
import json, os, sys, time, traceback
from cytopipe.errors import CytopipeError
from cytopipe.gatefile import check_gates, load_strategy
from cytopipe.samplesheet import read_sample_sheet
from cytopipe.stats import read_clinical

READERS = {"gates": lambda p: (load_strategy(p), check_gates(p)), "sheet": read_sample_sheet, "clinical": read_clinical}
for line in sys.stdin:
    job = json.loads(line)
    start = time.perf_counter()
    try:
        READERS[job["kind"]](job["path"])
        answer = {"outcome": "ok"}
    except CytopipeError as err:
        answer = {"outcome": "error", "message": str(err)}
    except BaseException:
        answer = {"outcome": "bug", "message": traceback.format_exc()}
    answer["seconds"] = time.perf_counter() - start
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
"""


class _Worker:
    """A capped ``python`` process that reads one input per request; counts outcomes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.counts = {"ok": 0, "error": 0}
        self.n = 0
        limit = 512 * 2**20 + 8 * MAX_INPUT

        def cap() -> None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, preexec_fn=cap)

    def check(self, kind: str, name: str, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")[:MAX_INPUT]
        path = self.folder / name
        path.write_bytes(data)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"kind": kind, "path": str(path)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], MAX_SECONDS * 4)
        if not ready:
            self.proc.kill()
            pytest.fail(f"{kind} read took over {MAX_SECONDS * 4} s: {data[:300]!r}")
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the worker died (memory cap?) reading {kind}: {data[:300]!r}")
        answer = json.loads(line)
        self.n += 1
        assert answer["outcome"] != "bug", f"{kind} input {data[:300]!r}:\n{answer['message']}"
        assert answer["seconds"] < MAX_SECONDS, (answer["seconds"], data[:300])
        if answer["outcome"] == "error":
            assert "\n" not in answer["message"] and answer["message"].strip(), answer["message"]
        self.counts[answer["outcome"]] += 1

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):
    runner = _Worker(tmp_path_factory.mktemp("gate_fuzz"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def gate_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """(suffix, text): every shipped YAML gate file and the Gating-ML of the fixed ones."""
    from cytopipe.gatefile import convert

    folder = tmp_path_factory.mktemp("gate_seeds")
    seeds = [(".yaml", p.read_text()) for p in sorted((REPO / "gates").glob("*.yaml"))]
    for path in sorted((REPO / "gates").glob("*_fixed.yaml")):  # Gating-ML holds fixed gates only
        convert(path, "gatingml", folder / f"{path.name}.xml")
        seeds.append((".xml", (folder / f"{path.name}.xml").read_text()))
    return seeds


_TOKEN = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?|[A-Za-z][\w+-]*")


def _mutate(text: str, data: st.DataObject) -> str:
    """One to four text mutations that keep most of the structure, so parsing gets past the first line."""
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        lines = text.splitlines(keepends=True) or [""]
        how = data.draw(st.sampled_from(["token", "token", "token", "line", "delete", "duplicate", "truncate",
                                         "chars", "nest", "alias"]), label="how")
        if how == "token":
            tokens = list(_TOKEN.finditer(text))
            if tokens:
                m = tokens[data.draw(st.integers(0, len(tokens) - 1), label="token")]
                text = text[:m.start()] + data.draw(st.sampled_from(HOSTILE), label="value") + text[m.end():]
        elif how == "line":
            k = data.draw(st.integers(0, len(lines) - 1), label="line")
            lines.insert(k, data.draw(st.sampled_from(HOSTILE), label="value") + "\n")
            text = "".join(lines)
        elif how == "delete":
            k = data.draw(st.integers(0, len(lines) - 1), label="line")
            text = "".join(lines[:k] + lines[k + 1:])
        elif how == "duplicate":
            k = data.draw(st.integers(0, len(lines) - 1), label="line")
            text = "".join(lines[:k + 1] + lines[k:])
        elif how == "truncate":
            text = text[: data.draw(st.integers(0, len(text)), label="cut")]
        elif how == "chars":
            at = data.draw(st.integers(0, len(text)), label="at")
            text = text[:at] + data.draw(st.text(max_size=8), label="chars") + text[at:]
        elif how == "nest":
            depth = data.draw(st.sampled_from([10, 100, 1000, 50_000]), label="depth")
            at = data.draw(st.integers(0, len(text)), label="at")
            text = text[:at] + "[" * depth + "]" * depth + text[at:]
        else:  # an alias bomb in front, referenced from somewhere inside
            bomb = "".join(f"x{k}: &x{k} [{', '.join([f'*x{k - 1}' if k else '1'] * 9)}]\n" for k in range(9))
            tokens = list(_TOKEN.finditer(text))
            if tokens:
                m = tokens[data.draw(st.integers(0, len(tokens) - 1), label="token")]
                text = bomb + text[:m.start()] + "*x8" + text[m.end():]
    return text


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_gate_files(worker, gate_seeds, data):
    suffix, seed = data.draw(st.sampled_from(gate_seeds), label="seed")
    worker.check("gates", f"gates{suffix}", _mutate(seed, data))


SHEET = (REPO / "sample_fcs" / "study.csv").read_text()
CLINICAL = (REPO / "sample_fcs" / "clinical.csv").read_text()


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["sheet", "clinical"]))
def test_mutated_sample_sheets_and_clinical_tables(worker, data, kind):
    seed = SHEET if kind == "sheet" else CLINICAL
    text = _mutate(seed, data)
    if data.draw(st.booleans(), label="header"):  # a hostile or colliding column name
        name = data.draw(st.sampled_from(["treg_pct", "File", "file", "", "=1+1", "ci_low", "day", "Subject",
                                          "sample", "x" * 300]), label="column")
        first, _, rest = text.partition("\n")
        text = f"{first},{name}\n" + "\n".join(f"{row},v" for row in rest.splitlines())
    worker.check(kind, f"{kind}.csv", text)


def test_every_example_was_read(worker):
    """Runs after the property tests (file order): they read inputs, some valid and some refused."""
    assert worker.n >= 2 * EXAMPLES
    assert worker.counts["ok"] > 0 and worker.counts["error"] > 0
    print(f"mutated inputs read: {worker.n} ({worker.counts})")
