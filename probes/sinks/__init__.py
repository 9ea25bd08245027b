"""Attention sinks and massive activations: the probe (``probe.py``) and its view (``views.py``)."""

from .probe import INPUT_KINDS, KeyMass, SinkConfig, SinkProbe, key_mass, residual_statistics

__all__ = ["INPUT_KINDS", "KeyMass", "SinkConfig", "SinkProbe", "key_mass", "residual_statistics"]
