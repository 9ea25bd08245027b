"""Model cards: the architectural facts every position-effects analysis depends on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelCard:
    model_id: str
    source: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    position_encoding: str  # "rope" | "learned_absolute" | "none"
    rope_bases: list[float | None] = field(default_factory=list)  # per layer
    rotary_dims: int | None = None
    rope_types: list[str | None] = field(default_factory=list)  # per layer: default, llama3, yarn...
    layer_types: list[str] = field(default_factory=list)  # per layer: full_attention / sliding_attention
    sliding_windows: list[int | None] = field(default_factory=list)  # per layer, None = full
    context_length: int | None = None
    chat_template: bool = False
    adds_bos: bool = False
    bos_token: str | None = None
    n_params: int = 0
    dtype: str = "float32"
    attn_implementation: str = "eager"
    weights: str = "unprocessed"  # no layer-norm folding or centring (see docs/architecture.md)
    attn_has_qk_norm: bool = False  # q/k normalised per head before RoPE (Gemma 3, Qwen 3, OLMo 2)
    attn_logit_softcap: float | None = None  # scores -> c * tanh(scores / c) before the mask (Gemma 2)

    @property
    def gqa_group_size(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, query_head: int) -> int:
        return query_head // self.gqa_group_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def summary_rows(self) -> list[tuple[str, str]]:
        bases = sorted({b for b in self.rope_bases if b is not None})
        windows = sorted({w for w in self.sliding_windows if w is not None})
        n_sliding = sum(w is not None for w in self.sliding_windows)
        return [
            ("model", self.model_id),
            ("source", self.source),
            ("architecture", self.architecture),
            ("layers", str(self.n_layers)),
            ("query heads / KV heads", f"{self.n_heads} / {self.n_kv_heads}"),
            ("head dim / d_model", f"{self.head_dim} / {self.d_model}"),
            ("position encoding", self.position_encoding),
            ("RoPE bases (per layer)", ", ".join(f"{b:g}" for b in bases) or "-"),
            ("rotary dims", str(self.rotary_dims) if self.rotary_dims else "-"),
            (
                "sliding windows",
                f"{n_sliding} of {self.n_layers} layers, window {', '.join(map(str, windows))}"
                if windows
                else "none",
            ),
            ("context length", str(self.context_length)),
            ("chat template", "yes" if self.chat_template else "no"),
            ("tokenizer adds BOS", f"yes ({self.bos_token})" if self.adds_bos else "no"),
            ("parameters", f"{self.n_params / 1e6:.1f}M"),
            ("dtype / attention", f"{self.dtype} / {self.attn_implementation}"),
            ("weights", self.weights),
        ]


def _rope_parameters(config) -> dict | None:
    params = getattr(config, "rope_parameters", None)
    if params is None and getattr(config, "rope_theta", None) is not None:
        params = {"rope_theta": config.rope_theta, "rope_type": "default"}
    return params


def build_card(model_id: str, source: str, hf_model, tokenizer) -> ModelCard:
    config = hf_model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = text_config.num_hidden_layers
    n_heads = text_config.num_attention_heads
    n_kv = getattr(text_config, "num_key_value_heads", None) or n_heads
    d_model = text_config.hidden_size
    head_dim = getattr(text_config, "head_dim", None) or d_model // n_heads
    layer_types = list(getattr(text_config, "layer_types", None) or ["full_attention"] * n_layers)

    names = {name.rsplit(".", 1)[-1] for name, _ in hf_model.named_modules()}
    params = _rope_parameters(text_config)
    if "rotary_emb" in names or (params and getattr(text_config, "model_type", "") != "gpt2"):
        position_encoding = "rope"
    elif any(n in names for n in ("wpe", "embed_positions", "position_embeddings")):
        position_encoding = "learned_absolute"
    else:
        position_encoding = "none"

    rope_bases: list[float | None] = [None] * n_layers
    rope_types: list[str | None] = [None] * n_layers
    rotary_dims = None
    if position_encoding == "rope" and params:
        for layer, ltype in enumerate(layer_types):
            p = params.get(ltype, params) if isinstance(params.get(ltype), dict) else params
            rope_bases[layer] = float(p.get("rope_theta")) if p.get("rope_theta") else None
            rope_types[layer] = p.get("rope_type", "default")
        factor = (
            getattr(text_config, "partial_rotary_factor", None)
            or getattr(text_config, "rotary_pct", None)
            or params.get("partial_rotary_factor", 1.0)
        )
        rotary_dims = int(head_dim * float(factor))

    window = getattr(text_config, "sliding_window", None)
    sliding = [window if (t == "sliding_attention" and window) else None for t in layer_types]
    context = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if getattr(text_config, attr, None):
            context = int(getattr(text_config, attr))
            break

    probe_ids = tokenizer("a")["input_ids"]
    bos_id = tokenizer.bos_token_id
    adds_bos = bool(bos_id is not None and probe_ids and probe_ids[0] == bos_id)
    dtype = str(next(hf_model.parameters()).dtype).replace("torch.", "")
    return ModelCard(
        model_id=model_id,
        source=source,
        architecture=(getattr(config, "architectures", None) or [type(hf_model).__name__])[0],
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        vocab_size=text_config.vocab_size,
        position_encoding=position_encoding,
        rope_bases=rope_bases,
        rotary_dims=rotary_dims,
        rope_types=rope_types,
        layer_types=layer_types,
        sliding_windows=sliding,
        context_length=context,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        adds_bos=adds_bos,
        bos_token=tokenizer.bos_token if adds_bos else None,
        n_params=sum(p.numel() for p in hf_model.parameters()),
        dtype=dtype,
        attn_implementation=getattr(config, "_attn_implementation", None) or "eager",
        attn_has_qk_norm=any(n.endswith(("q_norm", "query_layernorm")) for n, _ in hf_model.named_modules()),
        attn_logit_softcap=getattr(text_config, "attn_logit_softcapping", None) or None,
    )
