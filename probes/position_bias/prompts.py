"""Prompt formats: a plain prompt for base models, the model's own chat template for instruct
models, with the segments kept intact as separate parts.

The chat template is rendered once around a sentinel user message and split there: what comes
before the sentinel (system turn, user-turn opening) goes in front of the prompt's prefix, what
comes after (user-turn close, assistant-turn opening) after its suffix. The segments are
untouched, so they are still tokenized on their own and still interchangeable, and the joined
text is exactly ``model.chat(prompt.text)`` (tested on SmolLM2's template). A BOS that the
template writes as text and the tokenizer adds anyway is written once.

In the chat format the answer starts the assistant turn, so the choices lose their leading
space (``" A"`` -> ``"A"``, ``' "value"'`` -> ``'"value"'``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from posbench.data.segments import ScoredItem, SegmentedPrompt
from posbench.errors import BadOptionError, PosbenchError

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel

FORMATS = ("auto", "chat", "plain")
SENTINEL = "POSBENCH-PROMPT-SENTINEL-7f3a"


def resolve_format(model: "HookedModel", prompt_format: str) -> str:
    """``auto``: ``chat`` when the model has a chat template (an instruct model), else ``plain``."""
    if prompt_format not in FORMATS:
        raise BadOptionError(f"prompt_format={prompt_format!r}: use one of {', '.join(FORMATS)}")
    if prompt_format == "auto":
        return "chat" if model.card.chat_template else "plain"
    if prompt_format == "chat" and not model.card.chat_template:
        raise BadOptionError(
            f"prompt_format=chat but {model.model_id} has no chat template: use prompt_format=plain (or auto)"
        )
    return prompt_format


def chat_frame(model: "HookedModel") -> tuple[str, str]:
    """The text the chat template puts before and after a user message (generation prompt
    included), found by rendering it around a sentinel."""
    rendered = model.chat(SENTINEL)
    if rendered.count(SENTINEL) != 1:
        raise PosbenchError(
            f"{model.model_id}'s chat template does not render the user message verbatim exactly once: "
            "use prompt_format=plain"
        )
    head, tail = rendered.split(SENTINEL)
    bos = model.tokenizer.bos_token
    if model.card.adds_bos and bos and head.startswith(bos):
        head = head[len(bos):]  # the tokenizer adds it when the prefix is tokenized
    return head, tail


def chat_prompt(prompt: SegmentedPrompt, frame: tuple[str, str]) -> SegmentedPrompt:
    """``prompt`` inside the user turn: the frame's head before the prefix, its tail after the suffix."""
    head, tail = frame
    return SegmentedPrompt(head + prompt.prefix, prompt.segments, prompt.suffix + tail)


def formatted_item(item: ScoredItem, frame: tuple[str, str] | None) -> ScoredItem:
    """An item in the plain format (``frame=None``: unchanged) or inside the chat frame, where the
    answer opens the assistant turn and the choices lose their leading whitespace."""
    if frame is None:
        return item
    return replace(item, prompt=chat_prompt(item.prompt, frame), choices=tuple(c.lstrip() for c in item.choices))
