"""Where the time of one layer's attention statistics goes (issue 13), part by part.

``bench_speed.py`` times whole probes against the plain forward; this splits one layer of the
fast path into its parts on random q/k/v of a model's attention shape (default SmolLM2-135M: 9
query heads, 3 key-value heads, head dim 64), causal, one sequence, per ``--tokens`` length:

* ``sdpa``: PyTorch's causal SDPA (what the plain HF forward runs), and the CPU flash kernel
  that also returns each row's logsumexp (``flash_with_lse``: with it, single pattern entries
  A[t, j] = exp(q_t . k_j * scale - lse_t) cost O(d) each, no rows);
* ``rows_and_output``: posbench's ``attention_from_rows`` (the rows every statistic reads, and
  the layer output from them) for each ``--chunks`` row-chunk size;
* ``statistics``: on those rows, the positional-heads folds: the offset-aligned renormalised copy
  and its sums, the PDS against a profile, and the paired JSD of two sequences (per pair);
* ``qk_gemm``: the scores product of one 256-row chunk at the last chunk's width, in one GEMM and
  in 1024-column key tiles (output-write bound at d = 64);
* ``tokenizer``: building Gemma-3's tokenizer from its cached tokenizer.json (262k tokens, 515k
  merges) with transformers (``AutoTokenizer``) and with the Rust library alone, when cached.

Each number is the median of ``--repeats`` runs after a warm-up, in seconds per layer (one
sequence; the JSD per pair). Writes JSON to ``--out`` (or prints it).

    python benchmarks/bench_attention_parts.py --tokens 2048 8192 --chunks 256 64 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def layer_parts(tokens: int, heads: int, kv_heads: int, head_dim: int, chunks: list[int], repeats: int) -> dict:
    import torch

    from posbench.backends.attention_rows import attention_from_rows
    from posbench.head_statistics import _sub_blocks
    from posbench.reduce import Workspace, offset_aligned, offset_sums_aligned, position_dependence_aligned, row_jsd

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, tokens, head_dim, generator=g)
    k = torch.randn(2, kv_heads, tokens, head_dim, generator=g) * 1.5
    v = torch.randn(2, kv_heads, tokens, head_dim, generator=g)
    scale, group = head_dim**-0.5, heads // kv_heads
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    profile = torch.rand(heads, tokens, generator=g)
    profile /= profile.sum(-1, keepdim=True)
    out: dict = {
        "sdpa": median_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(
            q[:1], k_rep[:1], v_rep[:1], is_causal=True, scale=scale), repeats),
        "flash_with_lse": median_seconds(lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q[:1], k_rep[:1], v_rep[:1], 0.0, True, scale=scale), repeats),
    }
    for chunk in chunks:
        workspace = Workspace()

        def rows_only(sequences: int = 1):
            chunks_, _ = attention_from_rows(q[:sequences], k[:sequences], v[:sequences], None, scale, chunk=chunk)
            for _ in chunks_:
                pass

        def with_profile():
            chunks_, _ = attention_from_rows(q[:1], k[:1], v[:1], None, scale, chunk=chunk)
            for start, rows in chunks_:
                causal = rows[0, :, :, : start + rows.shape[2]]
                aligned, ok = offset_aligned(causal, start, None, workspace=workspace)
                offset_sums_aligned(aligned, tokens)
                position_dependence_aligned(aligned, ok, start, profile, workspace)

        def pair_with_jsd():
            chunks_, _ = attention_from_rows(q, k, v, None, scale, chunk=chunk)
            for start, rows in chunks_:
                a, b = rows[0, :, :, : start + rows.shape[2]], rows[1, :, :, : start + rows.shape[2]]
                for r0, r1 in _sub_blocks(a):
                    row_jsd(a[:, r0:r1, : start + r1], b[:, r0:r1, : start + r1], workspace)

        rows_s = median_seconds(rows_only, repeats)
        pair_s = median_seconds(lambda: rows_only(2), repeats)
        out[f"chunk_{chunk}"] = {
            "rows_and_output": rows_s,
            "offset_profile_and_pds": round(median_seconds(with_profile, repeats) - rows_s, 4),
            "paired_jsd": round(median_seconds(pair_with_jsd, repeats) - pair_s, 4),
        }
    queries = q[:1, :, -256:].reshape(1, kv_heads, group * 256, head_dim).contiguous()
    keys = k[:1].transpose(-1, -2)
    scores = torch.empty(1, kv_heads, group * 256, tokens)

    def tiled():
        for h in range(kv_heads):
            for c0 in range(0, tokens, 1024):
                torch.mm(queries[0, h], keys[0, h, :, c0 : c0 + 1024], out=scores[0, h, :, c0 : c0 + 1024])

    flops = 2 * heads * 256 * tokens * head_dim
    one = median_seconds(lambda: torch.matmul(queries, keys, out=scores), repeats)
    tiles = median_seconds(tiled, repeats)
    out["qk_gemm"] = {"one_gemm_gflops": round(flops / one / 1e9, 1), "key_tiles_gflops": round(flops / tiles / 1e9, 1)}
    return out


def tokenizer_build(repeats: int) -> dict | None:
    from posbench.zoo import cache_dir

    folder = cache_dir() / "models" / "gemma-3-270m"
    if not (folder / "tokenizer.json").exists():
        return None
    import tokenizers
    from transformers import AutoTokenizer

    return {"transformers_auto_tokenizer": median_seconds(lambda: AutoTokenizer.from_pretrained(folder), repeats),
            "rust_from_file": median_seconds(lambda: tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")),
                                             repeats)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 64, 16])
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = {"context": {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "threads": args.threads,
                          "torch": torch.__version__, "heads": args.heads, "kv_heads": args.kv_heads,
                          "head_dim": args.head_dim},
              "layers": {}}
    for tokens in args.tokens:
        print(f"{tokens} tokens ...", flush=True)
        result["layers"][str(tokens)] = layer_parts(tokens, args.heads, args.kv_heads, args.head_dim, args.chunks,
                                                    args.repeats)
        print(json.dumps(result["layers"][str(tokens)]), flush=True)
    result["tokenizer"] = tokenizer_build(args.repeats)
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
