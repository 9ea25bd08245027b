"""Positional heads: the probe (``probe.py``) and its view (``views.py``)."""

from .probe import (
    POSITIONAL_CLASSES,
    OffsetProfile,
    PairedRowJSD,
    PositionalHeadsConfig,
    PositionalHeadsProbe,
    PositionDependence,
    RepeatScores,
    classify,
)

__all__ = ["POSITIONAL_CLASSES", "OffsetProfile", "PairedRowJSD", "PositionDependence", "PositionalHeadsConfig",
           "PositionalHeadsProbe", "RepeatScores", "classify"]
