"""Instruction prompts and where their parts sit: chat prefix, instruction, post-instruction template.

Arditi et al. (2024) read the refusal direction at the *post-instruction* tokens: what the chat
template puts after the user's instruction (``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML).
A model with a chat template gets its own template; a model without one (a base model such as
Gemma-3-270M, the tiny test models) gets ``PLAIN_TEMPLATE``, and results record which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from posbench.errors import PosbenchError

if TYPE_CHECKING:  # pragma: no cover
    from posbench.model import HookedModel

PLAIN_TEMPLATE = "User: {instruction}\nAssistant:"
"""The prompt of a model without a chat template: the post-instruction tokens are ``\\nAssistant:``."""


@dataclass(frozen=True)
class InstructionPrompt:
    """One rendered prompt as token ids: ``ids[:instruction_start]`` is the chat prefix (system
    turn, user header), ``ids[instruction_start:len(ids) - n_post]`` the instruction, and the last
    ``n_post`` tokens the post-instruction template."""

    instruction: str
    ids: tuple[int, ...]
    instruction_start: int
    n_post: int

    @property
    def template_start(self) -> int:
        return len(self.ids) - self.n_post


def prompt_format(model: "HookedModel") -> str:
    """``"chat template"`` when the tokenizer has one, else ``"plain"`` (``PLAIN_TEMPLATE``)."""
    return "chat template" if model.card.chat_template else "plain"


def render(model: "HookedModel", instruction: str) -> str:
    """The prompt text the model sees for ``instruction``, ending where its answer starts."""
    if model.card.chat_template:
        return model.chat(instruction)
    return PLAIN_TEMPLATE.format(instruction=instruction)


def _encode(model: "HookedModel", text: str) -> list[int]:
    """Token ids of rendered prompt text. A chat template writes its own special tokens (a
    ``<bos>`` included), so only a BOS the template leaves out is added, once."""
    if not model.card.chat_template:
        return model.tokenize([text])[0] if text else []
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = model.tokenizer.bos_token_id
    if model.card.adds_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def build_prompt(model: "HookedModel", instruction: str) -> InstructionPrompt:
    """Render and tokenize one instruction, locating the instruction and the template tokens.

    The instruction's end is found in the rendered text; the template tokens are the ones past the
    longest token prefix shared with the text cut there (a BPE merge across the boundary moves the
    boundary to the merged token's start, never into the instruction)."""
    text = render(model, instruction)
    needle = instruction.strip()
    at = text.rfind(needle)
    if not needle or at < 0:
        raise PosbenchError(
            f"{model.model_id}'s chat template rewrites the instruction {instruction[:40]!r}: the refusal probe "
            "cannot locate the post-instruction tokens; pass instructions the template keeps verbatim"
        )
    ids = _encode(model, text)
    upto_end = _common_prefix(ids, _encode(model, text[: at + len(needle)]))
    start = min(_common_prefix(ids, _encode(model, text[:at])), upto_end)
    n_post = len(ids) - upto_end
    if n_post < 1:
        raise PosbenchError(
            f"{model.model_id}: the prompt has no tokens after the instruction, so there is no "
            "post-instruction position to read the refusal direction at"
        )
    return InstructionPrompt(instruction, tuple(ids), start, n_post)


def build_prompts(model: "HookedModel", instructions: Sequence[str]) -> list[InstructionPrompt]:
    prompts = [build_prompt(model, text) for text in instructions]
    model.check_lengths([p.ids for p in prompts], what="prompt")
    return prompts


def template_tokens(model: "HookedModel", prompts: Sequence[InstructionPrompt]) -> list[str]:
    """The post-instruction positions shared by every prompt (``-k .. -1``), as token strings of
    the first prompt: ``k`` is the smallest ``n_post`` among the prompts."""
    k = min(p.n_post for p in prompts)
    return [model.tokenizer.decode([t]) for t in prompts[0].ids[-k:]]
