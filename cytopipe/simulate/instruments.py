"""Instruments of the simulated study: the panel's fluorochromes and how each cytometer style writes a tube."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Fluorochromes of the panel, in detector (and spillover-matrix) order.
FLUOROCHROMES = ("FITC", "PE", "PerCP-Cy5.5", "PE-Cy7", "APC", "APC-Cy7")
#: Marker -> fluorochrome: the common 6-colour Treg panel (CD25 PE and FoxP3 APC as in the kits).
PANEL = {"CD4": "FITC", "CD25": "PE", "CD8": "PerCP-Cy5.5", "CD127": "PE-Cy7", "FoxP3": "APC", "CD3": "APC-Cy7"}


@dataclass(frozen=True, eq=False)
class InstrumentStyle:
    """How a cytometer and its software write the same tube.

    Parameters
    ----------
    name
        Style id used by ``--style``.
    cytometer
        ``$CYT``.
    channels
        ``($PnN, role)`` in file order; a role is ``FSC-A``, ``FSC-H``, ``SSC-A``, ``SSC-H``, ``Time`` or a
        fluorochrome of :data:`FLUOROCHROMES`.
    labels
        Marker -> ``$PnS`` text (e.g. ``"CD4 FITC"``).
    range
        ``$PnR`` of every channel; values are clipped at ``range - 1``.
    fsc_gain, ssc_gain, fluorescence_gain
        Scale relative to the FACSCanto units the model works in.
    spillover
        Rows = fluorochromes (spilling), columns = detectors, both in :data:`FLUOROCHROMES` order.
    spill_keyword
        ``$SPILLOVER`` (FCS 3.1) or ``SPILL`` (BD FCS 3.0 habit, kept by many exporters).
    integer
        Store unsigned integers (written as FCS 3.2 with ``$DATATYPE=I``: ``write_fcs`` takes integers only there);
        negative values are lost at 0, as on integer-ADC instruments.
    timestep
        ``$TIMESTEP`` in seconds.
    keywords
        Extra vendor keywords.
    """

    name: str
    cytometer: str
    channels: tuple[tuple[str, str], ...]
    labels: Mapping[str, str]
    range: int
    fsc_gain: float
    ssc_gain: float
    fluorescence_gain: float
    spillover: tuple[tuple[float, ...], ...]
    spill_keyword: str = "$SPILLOVER"
    integer: bool = False
    timestep: float = 0.01
    electronic_noise: float = 30.0
    keywords: Mapping[str, str] = field(default_factory=dict)

    @property
    def detectors(self) -> tuple[str, ...]:
        """``$PnN`` of the fluorescence detectors in :data:`FLUOROCHROMES` order."""
        by_role = {role: name for name, role in self.channels}
        return tuple(by_role[f] for f in FLUOROCHROMES)

    @property
    def version(self) -> str:
        """FCS version the style is written as."""
        return "3.2" if self.integer else "3.1"

    def spillover_text(self) -> str:
        """The spillover keyword value: ``n, detector names, row-major values``."""
        values = [f"{v:.6g}" for row in self.spillover for v in row]
        return ",".join([str(len(FLUOROCHROMES)), *self.detectors, *values])


# Spillover of a FACSCanto II for the panel (FITC->PE 0.165, PE->FITC 0.0125, PE->PerCP-Cy5.5 0.20,
# APC->APC-Cy7 0.10 ...).
_SPILL_CANTO = (
    (1.0, 0.165, 0.030, 0.005, 0.0, 0.0),
    (0.0125, 1.0, 0.200, 0.040, 0.002, 0.001),
    (0.0, 0.010, 1.0, 0.200, 0.030, 0.060),
    (0.0, 0.015, 0.050, 1.0, 0.002, 0.080),
    (0.0, 0.0, 0.010, 0.005, 1.0, 0.100),
    (0.0, 0.0, 0.005, 0.030, 0.020, 1.0),
)
# Attune NxT: PE and PE-Cy7 on the yellow (561 nm) laser, so FITC hardly reaches the PE detector.
_SPILL_ATTUNE = (
    (1.0, 0.020, 0.025, 0.001, 0.0, 0.0),
    (0.006, 1.0, 0.120, 0.030, 0.001, 0.001),
    (0.0, 0.008, 1.0, 0.150, 0.040, 0.070),
    (0.0, 0.010, 0.020, 1.0, 0.002, 0.120),
    (0.0, 0.0, 0.008, 0.004, 1.0, 0.140),
    (0.0, 0.0, 0.004, 0.040, 0.030, 1.0),
)
# Navios EX (three lasers, PE and PE-Cy7 on 488 nm, PE into PC5.5 high).
_SPILL_NAVIOS = (
    (1.0, 0.180, 0.040, 0.008, 0.0, 0.0),
    (0.015, 1.0, 0.280, 0.050, 0.001, 0.001),
    (0.0, 0.012, 1.0, 0.250, 0.020, 0.050),
    (0.0, 0.020, 0.060, 1.0, 0.002, 0.060),
    (0.0, 0.0, 0.012, 0.006, 1.0, 0.080),
    (0.0, 0.0, 0.006, 0.025, 0.015, 1.0),
)

STYLES: dict[str, InstrumentStyle] = {
    style.name: style
    for style in (
        InstrumentStyle(
            name="bd",
            cytometer="FACSCanto II",
            channels=(("FSC-A", "FSC-A"), ("FSC-H", "FSC-H"), ("SSC-A", "SSC-A"), ("SSC-H", "SSC-H"),
                      ("FITC-A", "FITC"), ("PE-A", "PE"), ("PerCP-Cy5-5-A", "PerCP-Cy5.5"), ("PE-Cy7-A", "PE-Cy7"),
                      ("APC-A", "APC"), ("APC-Cy7-A", "APC-Cy7"), ("Time", "Time")),
            labels={m: m for m in PANEL},
            range=262_144,
            fsc_gain=1.0,
            ssc_gain=1.0,
            fluorescence_gain=1.0,
            spillover=_SPILL_CANTO,
            keywords={"CREATOR": "BD FACSDiva Software Version 9.0", "EXPERIMENT NAME": "ITP IL-2 Treg",
                      "APPLY COMPENSATION": "TRUE"},
        ),
        InstrumentStyle(
            name="attune",
            cytometer="Attune NxT Acoustic Focusing Cytometer",
            channels=(("Time", "Time"), ("FSC-A", "FSC-A"), ("SSC-A", "SSC-A"), ("BL1-A", "FITC"),
                      ("BL3-A", "PerCP-Cy5.5"), ("YL1-A", "PE"), ("YL4-A", "PE-Cy7"), ("RL1-A", "APC"),
                      ("RL3-A", "APC-Cy7"), ("FSC-H", "FSC-H"), ("SSC-H", "SSC-H")),
            labels={"CD4": "CD4 FITC", "CD25": "CD25 PE", "CD8": "CD8 PerCP-Cy5.5", "CD127": "CD127 PE-Cy7",
                    "FoxP3": "Foxp3 APC", "CD3": "CD3 APC-Cy7"},
            range=1_048_576,
            fsc_gain=2.6,
            ssc_gain=1.7,
            fluorescence_gain=3.5,
            spillover=_SPILL_ATTUNE,
            timestep=0.001,
            electronic_noise=25.0,
            keywords={"CREATOR": "Attune NxT Software v3.2.1"},
        ),
        InstrumentStyle(
            name="navios",
            cytometer="Navios EX",
            channels=(("FSC-A", "FSC-A"), ("FSC-H", "FSC-H"), ("SSC-A", "SSC-A"), ("SSC-H", "SSC-H"),
                      ("FL1-A", "FITC"), ("FL2-A", "PE"), ("FL4-A", "PerCP-Cy5.5"), ("FL5-A", "PE-Cy7"),
                      ("FL6-A", "APC"), ("FL8-A", "APC-Cy7"), ("Time", "Time")),
            labels={"CD4": "CD4-FITC", "CD25": "CD25-PE", "CD8": "CD8-PC5.5", "CD127": "CD127-PC7",
                    "FoxP3": "FOXP3-APC", "CD3": "CD3-APC-A750"},
            range=1_048_576,
            fsc_gain=5.5,
            ssc_gain=3.0,
            fluorescence_gain=2.5,
            spillover=_SPILL_NAVIOS,
            spill_keyword="SPILL",
            integer=True,
            timestep=0.1,
            electronic_noise=40.0,
            keywords={"CREATOR": "Kaluza for Navios"},
        ),
    )
}
