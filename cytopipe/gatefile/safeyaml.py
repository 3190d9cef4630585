"""Reading YAML gate files safely: repeated keys, huge integers, alias bombs, deep nesting, size."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytopipe.bundled import not_found_hint
from cytopipe.errors import GateError

if TYPE_CHECKING:
    import yaml

#: Largest YAML gate file read (a 10,000-vertex polygon is about 0.25 MB; PyYAML reads about 1 MB/s).
MAX_YAML_BYTES = 2 * 2**20
#: Most values a YAML document may hold once its aliases are expanded, and its deepest nesting.
MAX_YAML_VALUES = 1_000_000
MAX_YAML_DEPTH = 64
#: Longest integer literal (Python refuses to convert more than 4,300 digits; no coordinate needs 300).
MAX_INT_DIGITS = 300


@functools.cache
def _loader() -> type:
    """The safe YAML loader class: refuses repeated keys (a silent overwrite hides a typo in a gate), unhashable
    keys, huge integers, alias bombs and deep nesting, each as a one-line YAML error.

    Made, and PyYAML imported (~10 ms), when a YAML file is first read: a run whose gates are Gating-ML or a FlowJo
    workspace never needs it before its workers start.
    """
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
            digits = sum(c.isdigit() for c in str(node.value))
            if digits > MAX_INT_DIGITS:
                raise yaml.constructor.ConstructorError(None, None, f"an integer with {digits} digits (at most "
                                                        f"{MAX_INT_DIGITS})", node.start_mark)
            return super().construct_yaml_int(node)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
    _Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
    return _Loader


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    import yaml

    seen: set = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise yaml.constructor.ConstructorError(None, None, f"{kind} used as a mapping key (keys are names)",
                                                    key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


def _check_expansion(node: yaml.Node | None) -> None:
    """Refuse documents whose aliases expand beyond :data:`MAX_YAML_VALUES` values or that nest deeper than
    :data:`MAX_YAML_DEPTH`, before anything walks them (an alias bomb is small on disk and huge in use).

    Notes
    -----
    The expanded size of a node is 1 + the expanded sizes of its children, memoised per node, so aliases
    (shared nodes) are counted as often as they are referenced, in time linear in the number of distinct nodes.
    Iterative, so a deep document cannot exhaust the stack here.
    """
    if node is None:
        return
    import yaml

    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(node, 1, False)]
    while stack:
        current, depth, expanded = stack.pop()
        if id(current) in size:
            continue
        if depth > MAX_YAML_DEPTH:
            raise yaml.constructor.ConstructorError(None, None, f"values nested more than {MAX_YAML_DEPTH} deep",
                                                    current.start_mark)
        if isinstance(current, yaml.ScalarNode):
            size[id(current)] = 1
            continue
        children = [c for pair in current.value for c in pair] if isinstance(current, yaml.MappingNode) \
            else list(current.value)
        if expanded:
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_YAML_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)",
                    current.start_mark)
            size[id(current)] = total
            continue
        stack.append((current, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in size)


def _load_yaml(text: str) -> Any:
    """Parse YAML text with :func:`_loader`'s loader after :func:`_check_expansion` (raises ``yaml.YAMLError``)."""
    import yaml

    loader = _loader()(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise yaml.YAMLError(f"values nested more than {MAX_YAML_DEPTH} deep") from None
        _check_expansion(node)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _read_text(path: str | os.PathLike[str]) -> str:
    where = os.fspath(path)
    try:
        return Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GateError(f"{where}: gate file not found{not_found_hint(where)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{where}: cannot read gate file: {exc}") from None


def _yaml_message(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = f"line {mark.line + 1}: " if mark is not None else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and mark is not None and start.line != mark.line:
        # The parser notices an unclosed bracket where the file ends; point at where it was opened too.
        problem += f" ({context} that starts on line {start.line + 1})"
    return " ".join(f"{where}: {line}malformed YAML: {problem}".split())
