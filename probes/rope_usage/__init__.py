"""RoPE frequency usage: the probe (``probe.py``), its folds (``statistics.py``), the band tables
and p-RoPE test (``bands.py``) and its view (``views.py``)."""

from .bands import band_effects, band_turns, pair_table
from .probe import RopeUsageConfig, RopeUsageProbe
from .statistics import RopeUsageStatistic

__all__ = ["RopeUsageConfig", "RopeUsageProbe", "RopeUsageStatistic", "band_effects", "band_turns",
           "pair_table"]
