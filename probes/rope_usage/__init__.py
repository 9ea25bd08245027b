"""RoPE frequency usage: the probe (``probe.py``) and its view (``views.py``)."""

from .probe import RopeUsageConfig, RopeUsageProbe, RopeUsageStatistic

__all__ = ["RopeUsageConfig", "RopeUsageProbe", "RopeUsageStatistic"]
