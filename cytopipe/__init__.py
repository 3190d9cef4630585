"""cytopipe: from a folder of raw FCS files to Treg % of CD4 per timepoint against baseline."""

__version__ = "0.1.0"
