"""YAML gate files: load, validate, write back and convert to and from Gating-ML 2.0.

A gate file is what a scientist writes by hand (schema in ``docs/gatefile.md`` and ``docs/ARCHITECTURE.md``)::

    name: Treg (CD25high FoxP3+)
    compensation: file
    transforms:
      asinh: {type: arcsinh, cofactor: 150}
    populations:
      - name: CD3+
        gate: {type: range, channels: [CD3], min: 1.9}
      - name: Treg
        parent: CD3+
        gate: {type: rectangle, channels: [CD25, {channel: FoxP3, transform: asinh}], min: [2.6, 2.3]}

Coordinates are written in *friendly* units of each dimension's transform (raw values for linear, logicle decades
``0..M``, ``asinh(x / cofactor)``, ``log10(x)``) and converted to Gating-ML 2.0 units on load; :func:`dump_yaml`
converts back. Every mistake is reported as one line ``<file>: population '<name>': <field>: <problem>``.

Modules: ``schema`` (the gate-file vocabulary: keys, transform parameters, friendly units), ``safeyaml`` (reading
YAML safely: duplicate keys, alias bombs, size limits), ``parse`` (YAML -> :class:`~cytopipe.gates.GatingStrategy`
with validation: :func:`parse_gates`, :func:`load_gates`), ``load`` (any gate file, YAML, Gating-ML or FlowJo:
:func:`load_strategy`, :func:`check_gates`, :func:`resolve_channels`) and ``export`` (strategy -> YAML:
:func:`dump_yaml`; :func:`convert` between YAML, Gating-ML 2.0 and FlowJo). Everything public is re-exported here.
"""

from cytopipe.bundled import find_gate_file as find_gate_file
from cytopipe.transforms import friendly_units

from .export import convert, dump_yaml
from .load import check_gates, load_strategy, resolve_channels
from .load import strategy_marker_problems as strategy_marker_problems
from .parse import load_gates, parse_gates
from .parse import read_gate_text as read_gate_text
from .safeyaml import MAX_INT_DIGITS as MAX_INT_DIGITS
from .safeyaml import MAX_YAML_BYTES as MAX_YAML_BYTES
from .safeyaml import MAX_YAML_DEPTH as MAX_YAML_DEPTH
from .safeyaml import MAX_YAML_VALUES as MAX_YAML_VALUES
from .schema import BOUND_PARAMS as BOUND_PARAMS
from .schema import CHANNEL_KEYS as CHANNEL_KEYS
from .schema import COMPENSATION_REFS as COMPENSATION_REFS
from .schema import GATE_KEYS as GATE_KEYS
from .schema import LINEAR_BY_DEFAULT as LINEAR_BY_DEFAULT
from .schema import MAX_RAW as MAX_RAW
from .schema import POPULATION_KEYS as POPULATION_KEYS
from .schema import TOP_KEYS as TOP_KEYS
from .schema import TRANSFORM_PARAMS as TRANSFORM_PARAMS

__all__ = [
    "load_gates",
    "parse_gates",
    "load_strategy",
    "check_gates",
    "dump_yaml",
    "convert",
    "resolve_channels",
    "friendly_units",
]
