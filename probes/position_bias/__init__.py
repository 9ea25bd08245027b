"""Position bias: lost in the middle (kv, mdqa), MCQ selection bias (PriDe), judge order bias,
the attention basin and AttnRank. The probe (``probe.py``), its tasks and prompt formats, the
metric tables (``analysis.py``) and its view (``views.py``)."""

from .probe import PositionBiasConfig, PositionBiasProbe, parse_choice
from .prompts import chat_frame, chat_prompt, resolve_format

__all__ = ["PositionBiasConfig", "PositionBiasProbe", "chat_frame", "chat_prompt", "parse_choice", "resolve_format"]
