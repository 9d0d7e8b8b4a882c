"""OpenVINO GenAI worker for bench_peers.py (runs in .peers/ov): LLMPipeline over all prompts at once
(it schedules a list of prompts with continuous batching), k samples each; prints one JSON line."""

import json
import sys
import time

import openvino as ov
import openvino_genai as og

spec = json.load(open(sys.argv[1]))
model = sys.argv[2]
t0 = time.perf_counter()
sched = og.SchedulerConfig()
sched.max_num_seqs = spec["batch_size"]
sched.cache_size = 4  # GB of KV cache
sched.dynamic_split_fuse = True
pipe = og.LLMPipeline(model, "CPU", scheduler_config=sched)
load = time.perf_counter() - t0
cfg = og.GenerationConfig()
cfg.do_sample = True
cfg.temperature = spec["temperature"]
cfg.top_p = spec["top_p"]
cfg.top_k = 0
cfg.max_new_tokens = spec["max_new_tokens"]
cfg.num_return_sequences = spec["k"]
cfg.apply_chat_template = False  # the prompts are rendered with the chat template already
cfg.rng_seed = 0
pipe.generate(spec["texts"][:1], og.GenerationConfig(max_new_tokens=4, apply_chat_template=False))  # warm-up
t0 = time.perf_counter()
res = pipe.generate(spec["texts"], cfg)
dt = time.perf_counter() - t0
tokens = res.perf_metrics.get_num_generated_tokens()
prec = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")).split("'")[-2:][0]
print(json.dumps({"precision": f"{model.rsplit('-', 1)[-1]} weights, {prec} compute", "tokens": int(tokens),
                  "seconds": dt, "load": load, "version": og.__version__}))
