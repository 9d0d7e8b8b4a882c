"""Benchmark: one decode step's attention of the sampler against FlexAttention on CPU (issue #27 item 3).

The sampler's decode attention (cotshape/generation/fused.py, ``_decode_attention``) reads every
column of the KV slab: the grouped query heads of a KV head are folded into one ``baddbmm`` with an
additive bias (-inf on masked columns: left padding, the slab's unfilled tail), then a softmax and a
``bmm``. FlexAttention (``torch.nn.attention.flex_attention`` with a block mask, compiled by
inductor's C++ backend) skips the blocks that are fully masked. This script times both (and stock
SDPA with a boolean mask) on the same random bf16 tensors, with SmolLM2-135M's head layout (9 query
heads, 3 KV heads, head dim 64), a batch of sequences whose valid columns are ``[start, end)``
(drawn so that about ``--masked`` of the slab is masked), and checks that the outputs agree.

    python bench/bench_decode_attention.py                 # batch 128, slab 700 columns
    python bench/bench_decode_attention.py --batch 32 --length 300

It prints the time per call of each path, the ratio to the sampler's path measured in this run, the
compile time and block-mask build time of FlexAttention (paid per process, and the mask again each
time the valid columns change, i.e. every decode step), and the CPU.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch


def cpu_name() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return m.group(1).strip() if m else "unknown CPU"


def timed(fn, reps: int) -> tuple[float, torch.Tensor]:
    for _ in range(3):
        out = fn()
    start = time.perf_counter()
    for _ in range(reps):
        out = fn()
    return (time.perf_counter() - start) / reps, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128, help="sequences decoded together (the sampler's batch)")
    ap.add_argument("--length", type=int, default=700, help="KV slab columns (prompt + generated so far)")
    ap.add_argument("--masked", type=float, default=0.41, help="share of the slab's columns that is masked")
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=128, help="FlexAttention's block size")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(0)
    b, h, kvh, d, n = args.batch, args.heads, args.kv_heads, args.head_dim, args.length
    g = h // kvh
    q = torch.randn(b, h, 1, d, dtype=torch.bfloat16)
    k = torch.randn(b, kvh, n, d, dtype=torch.bfloat16)
    v = torch.randn(b, kvh, n, d, dtype=torch.bfloat16)
    # valid columns [start, end): left padding before start, the unfilled tail after end
    valid = torch.clamp((torch.rand(b) * 0.4 + (1 - args.masked) - 0.2) * n, 1, n).long()
    start = (torch.rand(b) * (n - valid)).long()
    end = start + valid
    cols = torch.arange(n)
    keep = (cols[None] >= start[:, None]) & (cols[None] < end[:, None])  # [b, n]
    masked_share = 1 - keep.float().mean().item()

    # the sampler's path (fused._decode_attention without the shared-prefix split)
    qg = q.view(b, kvh, g, d).reshape(b * kvh, g, d)
    bias = torch.zeros(b, 1, n, dtype=torch.bfloat16).masked_fill(~keep[:, None], float("-inf"))
    bias = bias.repeat_interleave(kvh, 0).expand(b * kvh, g, n)
    keys, values = k.reshape(b * kvh, n, d), v.reshape(b * kvh, n, d)

    def ours():
        s = torch.baddbmm(bias, qg, keys.transpose(1, 2), alpha=d ** -0.5)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(values.dtype)
        return torch.bmm(p, values).view(b, kvh * g, d)

    def mask_mod(bi, hi, qi, kv):
        return (kv >= start[bi]) & (kv < end[bi])

    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, b, None, 1, n, device="cpu", BLOCK_SIZE=args.block)
    first_mask = time.perf_counter() - t0
    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, b, None, 1, n, device="cpu", BLOCK_SIZE=args.block)
    mask_build = time.perf_counter() - t0
    flex = torch.compile(flex_attention)
    t0 = time.perf_counter()
    flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    compile_s = time.perf_counter() - t0

    sdpa_mask = keep[:, None, None, :]
    rows = []
    t_ours, out_ours = timed(ours, args.reps)
    t_flex, out_flex = timed(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True), args.reps)
    t_sdpa, out_sdpa = timed(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=sdpa_mask, enable_gqa=True), args.reps)
    ref = out_ours.float()
    for name, t, out in (("sampler (baddbmm + bias, every column)", t_ours, out_ours),
                         ("FlexAttention (block mask, compiled)", t_flex, out_flex.view(b, h, d)),
                         ("SDPA (boolean mask)", t_sdpa, out_sdpa.view(b, h, d))):
        rows.append((name, t, t_ours / t, (out.float().view_as(ref) - ref).abs().max().item()))
    print(f"decode attention, one layer, one step: batch {b}, slab {n} columns ({100 * masked_share:.0f} % masked), "
          f"{h} heads / {kvh} KV heads x {d}, bf16; {torch.get_num_threads()} threads, {cpu_name()}, torch {torch.__version__}")
    print("| path | ms per call | speed vs the sampler | max abs diff vs the sampler |")
    print("|---|---|---|---|")
    for name, t, ratio, diff in rows:
        print(f"| {name} | {1e3 * t:.2f} | {ratio:.2f}x | {diff:.4f} |")
    print(f"FlexAttention: first compile {compile_s:.1f} s per process and shape; block mask {first_mask:.2f} s "
          f"the first time, {1e3 * mask_build:.1f} ms per rebuild (every decode step moves `end`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
