"""Masked attention runs SDPA in blocks of query rows against only the keys each block may see
(posbench.backends.hf_attention.blocked_sdpa): same output as one masked SDPA call, O(T x window)
instead of O(T^2) on sliding-window layers, the causal half instead of T x T under padding."""

import types

import pytest
import torch

from posbench.backends.hf_attention import sdpa, blocked_sdpa
from posbench.sites import Capture


def _sliding_mask(width: int, window: int, pads: list[int]) -> torch.Tensor:
    i, j = torch.arange(width)[:, None], torch.arange(width)[None, :]
    rows = [(j <= i) & (i - j < window) & (j >= pad) & (i >= pad) for pad in pads]
    return torch.stack(rows)[:, None]  # [B, 1, T, T], boolean as transformers builds it for SDPA


@pytest.mark.parametrize("block", [5, 8, 13])
def test_blocked_sdpa_equals_one_masked_call(block):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    width, window, heads, kv_heads, d = 60, 8, 4, 2, 16  # GQA 4/2, rows 0-6 of sequence 1 are left padding
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads)
    q, k, v = torch.randn(2, heads, width, d), torch.randn(2, kv_heads, width, d), torch.randn(2, kv_heads, width, d)
    mask = _sliding_mask(width, window, pads=[0, 7])
    plain, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d ** -0.5)
    blocked, _ = blocked_sdpa(sdpa_attention_forward, module, q, k, v, mask, block=block, scaling=d ** -0.5)
    real = torch.stack([torch.ones(width, dtype=torch.bool), torch.arange(width) >= 7])  # [B, T] real queries
    assert blocked.shape == plain.shape
    assert torch.allclose(blocked[real], plain[real], atol=1e-6)
    # the dispatcher blocks only sliding-window layers much longer than their window
    routed, _ = sdpa(module, q, k, v, mask, scaling=d ** -0.5, sliding_window=window)
    assert torch.allclose(routed[real], plain[real], atol=1e-6)


def test_padded_causal_attention_runs_blocked_and_equals_one_masked_call(monkeypatch):
    """A causal mask with left padding (or packed rows) and more than 2 x MASKED_BLOCK rows: the
    dispatcher blocks it, each block sees keys up to its own last row only, and the output is the
    one-call output."""
    import posbench.backends.hf_attention as hf
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    width, heads, kv_heads, d = 600, 4, 2, 16
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads)
    q, k, v = torch.randn(2, heads, width, d), torch.randn(2, kv_heads, width, d), torch.randn(2, kv_heads, width, d)
    i, j = torch.arange(width)[:, None], torch.arange(width)[None, :]
    mask = torch.stack([(j <= i), (j <= i) & (j >= 37) & (i >= 37)])[:, None]
    plain, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=d ** -0.5)
    seen = []

    def recording(module, q, k, v, mask, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return sdpa_attention_forward(module, q, k, v, mask, **kwargs)

    monkeypatch.setattr("transformers.integrations.sdpa_attention.sdpa_attention_forward", recording)
    routed, _ = sdpa(module, q, k, v, mask, scaling=d ** -0.5)
    assert seen == [(256, 256), (256, 512), (88, 600)]
    real = torch.stack([torch.ones(width, dtype=torch.bool), torch.arange(width) >= 37])
    assert torch.allclose(routed[real], plain[real], atol=1e-6)
    assert hf.MASKED_BLOCK == 256


def test_blocks_see_only_their_window():
    """Each block's SDPA call gets at most block + window - 1 keys."""
    seen = []

    def attention(module, q, k, v, mask, **kwargs):
        seen.append((q.shape[2], k.shape[2]))
        return torch.zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3]), None

    width, window = 100, 10
    q = k = v = torch.zeros(1, 1, width, 4)
    blocked_sdpa(attention, None, q, k, v, _sliding_mask(width, window, [0]), block=window)
    assert len(seen) == 10 and seen[0] == (10, 10) and all(keys == 19 for _, keys in seen[1:])


@pytest.mark.embedded
def test_gemma_sliding_layers_run_blocked_and_agree(gemma, monkeypatch):
    """Gemma-3 at 1,100 tokens (> 2 x its 512 window): the 15 sliding layers go through the blocked
    path, and the final hidden state equals the one from one masked SDPA call per layer."""
    import posbench.backends.hf_attention as hf

    calls = []

    def counting(attention, module, q, k, v, mask, block, **kwargs):
        calls.append(block)
        return blocked_sdpa(attention, module, q, k, v, mask, block, **kwargs)

    def one_call(attention, module, q, k, v, mask, block, **kwargs):
        return attention(module, q, k, v, mask, **kwargs)

    batch = gemma.batch([gemma.random_tokens(1, 1100, torch.Generator().manual_seed(0))[0].tolist()])
    capture = [Capture("h", "final_norm", lambda h, ctx: h.detach().clone())]
    monkeypatch.setattr(hf, "blocked_sdpa", counting)
    blocked = gemma.run(batch, capture)["h"]
    assert calls == [512] * sum(1 for w in gemma.card.sliding_windows if w)
    monkeypatch.setattr(hf, "blocked_sdpa", one_call)
    plain = gemma.run(batch, capture)["h"]
    torch.testing.assert_close(blocked, plain, rtol=1e-4, atol=1e-4)
