"""The refusal direction and the refusal cliff: the probe (``probe.py``), its view (``views.py``),
the direction and probes (``direction.py``), prompts (``prompts.py``), the trace and cliff
(``trace.py``) and head attribution (``heads.py``)."""

from .direction import LinearProbe, RefusalDirection, candidate_table, difference_in_means
from .heads import attribution_table, causal_effects, suppressors
from .probe import CONDITIONS, RefusalConfig, RefusalProbe
from .prompts import PLAIN_TEMPLATE, InstructionPrompt, build_prompt, build_prompts, prompt_format
from .trace import ResponseTrace, TracedSequence, cliff_metrics, segment_response, trace_response, trace_sequences

__all__ = [
    "CONDITIONS", "PLAIN_TEMPLATE", "InstructionPrompt", "LinearProbe", "RefusalConfig", "RefusalDirection",
    "RefusalProbe", "ResponseTrace", "TracedSequence", "attribution_table", "build_prompt", "build_prompts", "candidate_table",
    "causal_effects", "cliff_metrics", "difference_in_means", "prompt_format", "segment_response", "suppressors",
    "trace_response", "trace_sequences",
]
