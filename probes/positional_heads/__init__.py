"""Positional heads: the probe (``probe.py``) and its view (``views.py``). The statistics live in
``posbench.head_statistics`` and the taxonomy in ``posbench.heads`` (shared with other probes)."""

from .probe import PositionalHeadsConfig, PositionalHeadsProbe

__all__ = ["PositionalHeadsConfig", "PositionalHeadsProbe"]
