"""Benchmark: one decode step's attention of the sampler against FlexAttention on CPU (issue #27 item 3).

The sampler's decode attention (cotshape/generation/fused.py, ``_decode_attention``) reads every
column of the KV slab: the grouped query heads of a KV head are folded into one ``baddbmm`` with an
additive bias (-inf on masked columns: left padding, the slab's unfilled tail), then a softmax and a
``bmm``. FlexAttention (``torch.nn.attention.flex_attention`` with a block mask, compiled by
inductor's C++ backend) skips the blocks that are fully masked, and a small C++ operator
(:data:`CPP_SOURCE`, built here with ``torch.utils.cpp_extension`` where a compiler and ninja exist)
reads only each sequence's valid columns. This script times them (and stock SDPA with a boolean mask) on the same random bf16 tensors, with SmolLM2-135M's head layout (9 query
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


#: a ragged decode attention as a small C++ operator (torch.utils.cpp_extension): per sequence and
#: KV head, only the valid columns [start, end) are read; the grouped query heads of that KV head
#: share each key and value row (converted to float once); softmax in float; at::parallel_for over
#: sequence x KV head
CPP_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

torch::Tensor ragged_decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                      torch::Tensor start, torch::Tensor end, double scale) {
  // q [BK, g, d], k and v [BK, t, d] (bf16, contiguous), start and end [BK] (int64)
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16);
  q = q.contiguous(); k = k.contiguous(); v = v.contiguous();
  const int64_t BK = q.size(0), g = q.size(1), d = q.size(2), t = k.size(1);
  auto out = torch::empty({BK, g, d}, q.options());
  const at::BFloat16* qa = q.data_ptr<at::BFloat16>();
  const at::BFloat16* ka = k.data_ptr<at::BFloat16>();
  const at::BFloat16* va = v.data_ptr<at::BFloat16>();
  const int64_t* st = start.data_ptr<int64_t>();
  const int64_t* en = end.data_ptr<int64_t>();
  at::BFloat16* oa = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, BK, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> qf(g * d), row(d), scores(g * t), acc(g * d);
    for (int64_t bk = b0; bk < b1; ++bk) {
      const int64_t s0 = st[bk], n = en[bk] - st[bk];
      for (int64_t i = 0; i < g * d; ++i) qf[i] = static_cast<float>(qa[bk * g * d + i]) * static_cast<float>(scale);
      for (int64_t j = 0; j < n; ++j) {
        const at::BFloat16* kr = ka + (bk * t + s0 + j) * d;
        for (int64_t x = 0; x < d; ++x) row[x] = static_cast<float>(kr[x]);
        for (int64_t r = 0; r < g; ++r) {
          float dot = 0.f;
          const float* qr = qf.data() + r * d;
          for (int64_t x = 0; x < d; ++x) dot += qr[x] * row[x];
          scores[r * n + j] = dot;
        }
      }
      std::vector<float> total(g, 0.f);
      for (int64_t r = 0; r < g; ++r) {
        float m = -INFINITY;
        for (int64_t j = 0; j < n; ++j) m = std::max(m, scores[r * n + j]);
        for (int64_t j = 0; j < n; ++j) { scores[r * n + j] = std::exp(scores[r * n + j] - m); total[r] += scores[r * n + j]; }
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const at::BFloat16* vr = va + (bk * t + s0 + j) * d;
        for (int64_t x = 0; x < d; ++x) row[x] = static_cast<float>(vr[x]);
        for (int64_t r = 0; r < g; ++r) {
          const float p = scores[r * n + j];
          float* ar = acc.data() + r * d;
          for (int64_t x = 0; x < d; ++x) ar[x] += p * row[x];
        }
      }
      for (int64_t r = 0; r < g; ++r)
        for (int64_t x = 0; x < d; ++x) oa[(bk * g + r) * d + x] = static_cast<at::BFloat16>(acc[r * d + x] / total[r]);
    }
  });
  return out;
}
"""


def build_cpp_op():
    """The C++ operator, compiled with ``-O3 -march=native -fopenmp``; (op, seconds) or (None, reason)."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("ninja"):
        return None, "no C++ compiler or ninja on PATH"
    from torch.utils.cpp_extension import load_inline

    t0 = time.perf_counter()
    try:
        mod = load_inline("cotshape_ragged_decode", cpp_sources=CPP_SOURCE, functions=["ragged_decode_attention"],
                          extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # noqa: BLE001 - any build failure is reported, the other paths still run
        return None, f"build failed: {str(e).splitlines()[0][:200]}"
    return mod.ragged_decode_attention, time.perf_counter() - t0


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
    cpp, cpp_info = build_cpp_op()
    if cpp is not None:
        starts, ends = start.repeat_interleave(kvh), end.repeat_interleave(kvh)
        t_cpp, out_cpp = timed(lambda: cpp(qg, keys, values, starts, ends, d ** -0.5), args.reps)
    ref = out_ours.float()
    for name, t, out in (("sampler (baddbmm + bias, every column)", t_ours, out_ours),
                         ("FlexAttention (block mask, compiled)", t_flex, out_flex.view(b, h, d)),
                         ("SDPA (boolean mask)", t_sdpa, out_sdpa.view(b, h, d))):
        rows.append((name, t, t_ours / t, (out.float().view_as(ref) - ref).abs().max().item()))
    if cpp is not None:
        rows.append(("C++ operator (valid columns only)", t_cpp, t_ours / t_cpp,
                     (out_cpp.float().view_as(ref) - ref).abs().max().item()))
    print(f"decode attention, one layer, one step: batch {b}, slab {n} columns ({100 * masked_share:.0f} % masked), "
          f"{h} heads / {kvh} KV heads x {d}, bf16; {torch.get_num_threads()} threads, {cpu_name()}, torch {torch.__version__}")
    print("| path | ms per call | speed vs the sampler | max abs diff vs the sampler |")
    print("|---|---|---|---|")
    for name, t, ratio, diff in rows:
        print(f"| {name} | {1e3 * t:.2f} | {ratio:.2f}x | {diff:.4f} |")
    print(f"FlexAttention: first compile {compile_s:.1f} s per process and shape; block mask {first_mask:.2f} s "
          f"the first time, {1e3 * mask_build:.1f} ms per rebuild (every decode step moves `end`)")
    print("C++ operator: " + (f"built in {cpp_info:.1f} s" if cpp is not None else cpp_info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
