"""cytopipe: from a folder of raw FCS files to Treg % of CD4 per timepoint against baseline.

Everything a user needs is importable from here::

    import cytopipe
    result = cytopipe.run("sample_fcs/study.csv", gates="gates/treg.yaml", out="results")
    result.treg          # pandas DataFrame, one row per sample
    sample = cytopipe.read_fcs("sample_fcs/ITP-01_D0.fcs")
    sample.events, sample.channels, sample.markers, sample.metadata

Names are imported lazily so that ``cytopipe --help`` and worker processes start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CytopipeError": "errors", "FCSError": "errors", "GateError": "errors", "MarkerError": "errors",
    "SampleSheetError": "errors", "ConfigError": "errors",
    "Sample": "fcs", "read_fcs": "fcs", "write_fcs": "fcs",
    "Spillover": "compensate", "compensate": "compensate", "read_spillover_file": "compensate",
    "spillover_from_metadata": "compensate",
    "Logicle": "transforms", "Arcsinh": "transforms", "Linear": "transforms", "Log": "transforms",
    "Hyperlog": "transforms",
    "Dimension": "gates", "Gate": "gates", "RectangleGate": "gates", "PolygonGate": "gates",
    "EllipsoidGate": "gates", "QuadrantGate": "gates", "BooleanGate": "gates", "Population": "gates",
    "GatingStrategy": "gates", "GatingResult": "evaluate",
    "load_gates": "gatefile", "load_strategy": "gatefile",
    "read_gatingml": "gatingml", "write_gatingml": "gatingml",
    "read_sample_sheet": "samplesheet",
    "Panel": "panel", "read_panel": "panel",
    "process_sample": "pipeline",
    "run": "batch", "RunResult": "batch",
    "render_report": "report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cytopipe' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
