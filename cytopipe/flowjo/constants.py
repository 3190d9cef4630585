"""FlowJo workspace vocabulary in one place: XML namespaces, element and transform names, compensation naming.

The reader (:mod:`cytopipe.flowjo.reader`) and any writer of FlowJo workspaces import these, so both directions
spell FlowJo's names the same way.
"""

from __future__ import annotations

#: Gating-ML namespaces FlowJo writes: FlowJo 10 uses Gating-ML 2.0, FlowJo 7.6 (PC) Gating-ML 1.5.
GATING_ML_20 = {
    "gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
    "transforms": "http://www.isac-net.org/std/Gating-ML/v2.0/transformations",
    "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes",
}
GATING_ML_15 = {
    "gating": "http://www.isac-net.org/std/Gating-ML/v1.5/gating",
    "transforms": "http://www.isac-net.org/std/Gating-ML/v1.5/transformations",
    "data-type": "http://www.isac-net.org/std/Gating-ML/v1.5/datatypes",
    "comp": "http://www.isac-net.org/std/Gating-ML/v1.5/compensation",
}
#: Attribute of the root ``Workspace`` element naming the FlowJo release (``10.8.0``, ``9.7.2``, ``7.6.5``).
FLOWJO_VERSION_ATTR = "flowJoVersion"
#: FlowJo releases whose workspace layout the reader understands (major version).
SUPPORTED_MAJOR = (7, 8, 9, 10)
#: FlowJo 10's default workspace format version (the ``version`` attribute of ``Workspace``).
WORKSPACE_VERSION_10 = "20.0"

#: Gate elements (local names) in Gating-ML-style workspaces (FlowJo 7.6 PC and FlowJo 10).
GML_GATES = ("RectangleGate", "PolygonGate", "EllipsoidGate", "QuadrantGate")
#: Gate elements in FlowJo 8/9 (Mac) workspaces, inside a ``PolygonGate`` container.
V9_GATES = ("Polygon", "PolyRect", "Range", "Ellipse")
#: Boolean population elements of FlowJo 7.6/10.
BOOLEAN_NODES = {"AndNode": "and", "OrNode": "or", "NotNode": "not"}

#: Axis transform elements under a sample's ``Transformations`` (FlowJo 10).
TRANSFORM_LINEAR = "linear"
TRANSFORM_LOG = "log"
TRANSFORM_BIEX = "biex"
TRANSFORM_ARCSINH = "fasinh"
TRANSFORM_LOGICLE = "logicle"
TRANSFORMS = (TRANSFORM_LINEAR, TRANSFORM_LOG, TRANSFORM_BIEX, TRANSFORM_ARCSINH, TRANSFORM_LOGICLE)

#: FlowJo names a compensated parameter ``<prefix><detector><suffix>``: FlowJo 10 and 7.6 ``Comp-FITC-A``,
#: FlowJo 8/9 ``<FITC-A>``. The defaults when a matrix does not say.
COMP_PREFIX = "Comp-"
COMP_SUFFIX = ""
V9_COMP_PREFIX = "<"
V9_COMP_SUFFIX = ">"
#: The matrix id cytopipe gives the workspace's compensation in a GatingStrategy.
MATRIX_ID = "flowjo"

#: FlowJo draws ellipses in a 256 x 256 display grid laid over the transformed axes.
DISPLAY_BINS = 256.0
#: Channels of FlowJo's biex lookup table (FlowJo 9 and 10).
BIEX_CHANNELS = 4096
#: FlowJo's default biex settings (FlowJo 9 "custom transform" and FlowJo 10): top of scale, decades, width basis.
BIEX_DEFAULT_MAX = 262144.0
BIEX_DEFAULT_POS = 4.418540
BIEX_DEFAULT_NEG = 0.0
BIEX_DEFAULT_WIDTH = -10.0
#: Where a FlowJo 9 polygon vertex at or below the bottom of a biex axis (display 0) is moved: half a channel down,
#: below every event (those below the table sit on display 0), so the gate holds them, as in FlowJo.
V9_BELOW_SCALE = -0.5 / BIEX_CHANNELS

#: The group whose gates apply to every sample unless ``--wsp-sample`` names another tree.
ALL_SAMPLES = "All Samples"
