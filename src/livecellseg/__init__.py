"""livecellseg: instance segmentation of cells in phase-contrast microscopy (LIVECell)."""

__version__ = "0.1.0"
