"""CTranslate2 worker for bench_peers.py (the project's venv with .peers/ct2 on the path): the same
token ids, k copies of each prompt in one generate_batch at the sampler's batch size; prints one
JSON line. On a CPU without bf16 compute the bf16 weights run as float32 (the row says so)."""

import json
import os
import sys
import time

import ctranslate2
from transformers import AutoTokenizer

spec = json.load(open(sys.argv[1]))
model, quant, tok_dir = sys.argv[2], sys.argv[3], sys.argv[4]
tok = AutoTokenizer.from_pretrained(tok_dir)
supported = ctranslate2.get_supported_compute_types("cpu")
compute = {"bfloat16": "bfloat16" if "bfloat16" in supported else "float32", "int8": "int8"}[quant]
t0 = time.perf_counter()
gen = ctranslate2.Generator(model, device="cpu", compute_type=compute, intra_threads=os.cpu_count() or 1)
load = time.perf_counter() - t0
tokens_in = [tok.convert_ids_to_tokens(x) for x in spec["ids"] for _ in range(spec["k"])]
gen.generate_batch(tokens_in[:1], max_length=4, include_prompt_in_result=False)  # warm-up, not timed
t0 = time.perf_counter()
results = gen.generate_batch(tokens_in, max_batch_size=spec["batch_size"], sampling_topk=0, sampling_topp=spec["top_p"],
                             sampling_temperature=spec["temperature"], max_length=spec["max_new_tokens"],
                             include_prompt_in_result=False, end_token=tok.eos_token)
dt = time.perf_counter() - t0
n = spec["max_new_tokens"]
# sequences exclude the end token: count it when the sequence stopped before the limit
tokens = sum(len(r.sequences_ids[0]) + (len(r.sequences_ids[0]) < n) for r in results)
print(json.dumps({"precision": f"{quant} weights, {compute} compute", "tokens": tokens, "seconds": dt, "load": load,
                  "version": ctranslate2.__version__}))
