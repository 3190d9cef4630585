"""FlowJo workspaces: read their gates, compensation and transforms; check FlowJo's own counts; write them.

* :mod:`cytopipe.flowjo.constants` — FlowJo's XML vocabulary (namespaces, transform names, ``Comp-`` naming).
* :mod:`cytopipe.flowjo.transforms` — FlowJo's biex and log axes.
* :mod:`cytopipe.flowjo.reader` — workspace XML to plain objects and to a :class:`cytopipe.gates.GatingStrategy`.
* :mod:`cytopipe.flowjo.check` — ``cytopipe flowjo check``: FlowJo's counts against cytopipe's.
* :mod:`cytopipe.flowjo.write` — FlowJo 10 workspaces out (``gates_fitted.wsp``, ``cytopipe gates convert --to wsp``).
* :mod:`cytopipe.flowjo.render` — their XML: each sample's ``<Sample>`` element (rendered in the worker), then joined.
"""

from .reader import (
    OWN,
    Workspace,
    WorkspaceError,
    default_tree_notice,
    is_workspace,
    load_workspace_strategy,
    own_sample,
    own_strategies,
    read_workspace,
)

__all__ = ["OWN", "Workspace", "WorkspaceError", "default_tree_notice", "is_workspace", "load_workspace_strategy",
           "own_sample", "own_strategies", "read_workspace"]
