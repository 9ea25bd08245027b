"""Activation patching: the probe (``probe.py``) and its view (``views.py``); the engine is
``posbench.experiments.patching``."""

from .probe import PatchingConfig, PatchingProbe, usable_pairs
from .views import PatchingView

__all__ = ["PatchingConfig", "PatchingProbe", "PatchingView", "usable_pairs"]
