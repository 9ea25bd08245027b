"""Backends: the only code that knows a hooking library's names.

A backend takes a ``Batch`` plus declared captures, edits and attention overrides, runs the model
once and returns what the captures reduced to. It also offers next-token log-probabilities
(unembedded in chunks), greedy generation, and reads of weights and rotary frequencies.
``TransformerLensBackend`` (TransformerLens 4.x ``TransformerBridge``) is the one in use; a
second backend (nnsight, for remote and multi-device models) implements the same class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch

from ..sites import AttentionCapture, AttentionOverride, Capture, Edit, ModelFacts

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Batch


@dataclass
class RunOutput:
    """What one forward pass returns: logits if asked for, and each capture's results.

    ``captured[name]`` maps layer -> result for layered sites and attention captures, and is
    the result itself for layerless sites (``final_norm``).
    """

    logits: torch.Tensor | None = None
    captured: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.captured[name]


class Backend(ABC):
    """Runs one model. Subclasses set ``name`` and ``attn_implementation``."""

    name: ClassVar[str]
    attn_implementation: str = "eager"

    @property
    @abstractmethod
    def facts(self) -> ModelFacts: ...

    @abstractmethod
    def supports(self, site: str, edit: bool = False) -> bool:
        """Whether ``site`` can be read (or, with ``edit``, written) on this model."""

    @abstractmethod
    def run(
        self,
        batch: "Batch",
        captures: Sequence[Capture | AttentionCapture] = (),
        edits: Sequence[Edit] = (),
        overrides: Sequence[AttentionOverride] = (),
        logits: bool = False,
    ) -> RunOutput:
        """One forward pass; logits only when asked (a pass can stop before the unembedding)."""

    @abstractmethod
    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final normalised hidden states [..., D] (softcap included)."""

    @abstractmethod
    def rotary_inv_freq(self, layer: int) -> torch.Tensor | None:
        """The layer's own RoPE inv_freq (rad/token per rotary pair), or None without RoPE."""

    def rotary_attention_factor(self, layer: int) -> float:
        """The factor the model multiplies its rotary cos/sin by (1 for plain RoPE; YaRN's mscale)."""
        return 1.0

    @abstractmethod
    def attention_scaling(self, layer: int) -> float: ...

    @abstractmethod
    def head_output_weights(self, layer: int) -> torch.Tensor:
        """W_O of ``layer`` split by head: [H, d_head, D] (z_h @ W_O[h] is head h's output)."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "attn_implementation": self.attn_implementation}
