"""LLM inference throughput: the naive loop against the intentrec engine, on the same prompts, in one run.

    .venv/bin/python benchmarks/llm_throughput.py --dataset runs/data/beauty --model smollm2 --n 200

``--dataset`` is a prepared dataset (``intentrec prepare generic ../shared/data/amazon/beauty-2014-5core
--protocol llm4sbr-beauty --out runs/data/beauty``). The prompts are those of the first ``--n`` examples of
the test split (prefix-augmented sessions, so consecutive examples grow the same session).

* naive: one prompt at a time in the original order, the KV cache cleared before each (no prefix
  reuse, no de-duplication, one sequence);
* engine: ``run_inference`` with a fresh answer store (de-duplication, prompts sorted for prefix
  reuse, ``n_parallel`` sequences per decode, answers committed per chunk);
* ablations (``--ablations``): de-duplication only; de-duplication + sorted prefix reuse on one
  sequence; ``--share-ablation``: the engine again without the shared prefix (``share_prefix=False``);
* ``--also-templates T1,T2``: the engine on the same examples' prompts under other templates;
* the seeds' way (``--hf-n N``): Hugging Face ``generate``, one prompt at a time, the same GGUF file
  loaded into ``transformers`` (dequantised to float32), greedy, same max tokens and repetition
  penalty, on the first N distinct prompts; compared per prompt with the engine. ``--hf-batch B``
  adds the same prompts B per ``generate`` call (left padding, sorted by length).
* llama.cpp's own server (``--llama-server BINARY``): ``llama-server --parallel N --cont-batching`` on
  the same GGUF, the distinct prompts sent N at a time through intentrec's OpenAI backend.

Model loading is outside every timing. It also times a few prompts on every installed shipped model
and measures on ``--quality-n`` sampled prompts how often each model's answer is empty, garbage, or
repeats a title of the session. The report goes to ``--out`` (default ``runs/llm-throughput.md``);
``docs/results/llm-throughput.md`` collects the measured reports, each with its command.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import non_negative_int, positive_int  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--template", default="llm4sbr-short")
    p.add_argument("--n", type=positive_int, default=200)
    p.add_argument("--n-parallel", type=positive_int, default=8)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--per-prompt-models", default="smollm2,qwen0.5b,qwen1.5b")
    p.add_argument("--per-prompt-n", type=positive_int, default=4)
    p.add_argument("--quality-n", type=non_negative_int, default=30)
    p.add_argument(
        "--hf-n", type=non_negative_int, default=0, help="prompts for the Hugging Face generate row (0: no row)"
    )
    p.add_argument(
        "--llama-server",
        type=Path,
        default=None,
        help="a llama-server binary (llama.cpp's server): adds its row on the same distinct prompts",
    )
    p.add_argument(
        "--hf-batch",
        type=positive_int,
        default=1,
        help="also time HF generate with this many prompts per call, left-padded (1: no batched row)",
    )
    p.add_argument(
        "--share-ablation",
        action="store_true",
        help="also run the engine with share_prefix=False (the common prefix evaluated on every slot)",
    )
    p.add_argument(
        "--also-templates",
        default="",
        help="comma-separated templates whose prompts the engine also answers in this run (same examples)",
    )
    p.add_argument("--quality-models", default="smollm2,qwen0.5b,qwen1.5b")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "llm-throughput.md",
        help="the report (overwritten); docs/results/llm-throughput.md collects such reports by hand",
    )
    return p.parse_args()


def _build_flags() -> str:
    """How the installed llama.cpp was built, from its system-info line."""
    import llama_cpp

    try:
        info = llama_cpp.llama_print_system_info().decode()
    except Exception as exc:  # an old or unusual build: say so rather than guess
        return f"system info unavailable: {exc}"
    return "system info: " + " ".join(info.split())


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _naive(backend, prompts, decoding):
    started = time.perf_counter()
    gens = [backend.generate([p], decoding)[0] for p in prompts]
    return time.perf_counter() - started, gens


def _hf_generate(model_name: str, prompts, decoding, threads: int | None, batch: int = 1) -> tuple[float, int]:
    """Seconds and completion tokens of HF ``generate`` over ``prompts``, ``batch`` at a time (left-padded,
    sorted by length so a batch holds similar lengths; loading untimed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from intentrec.semantic.llm.models import ensure_shipped_model

    if threads:
        torch.set_num_threads(threads)
    path = ensure_shipped_model(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in prompts]
    texts.sort(key=lambda t: len(tokenizer(t)["input_ids"]))
    tokens = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            ids = tokenizer(texts[start : start + batch], return_tensors="pt", padding=True)
            out = model.generate(
                **ids,
                max_new_tokens=decoding.max_tokens,
                do_sample=False,
                repetition_penalty=decoding.repeat_penalty,
                pad_token_id=tokenizer.pad_token_id,
            )
            completion = out[:, ids["input_ids"].shape[1] :]
            # tokens up to and including the first end-of-sequence token of each answer
            ended = (completion == tokenizer.eos_token_id) | (completion == tokenizer.pad_token_id)
            first_end = torch.where(ended.any(1), ended.int().argmax(1) + 1, completion.shape[1])
            tokens += int(first_end.sum())
    return time.perf_counter() - started, tokens


def _llama_server(binary: Path, model_name: str, prompts, decoding, n_parallel: int, threads: int | None):
    """Seconds and generations of llama.cpp's own server (``--parallel`` slots, continuous batching,
    its prompt cache) over ``prompts``, sent ``n_parallel`` at a time through intentrec's OpenAI
    backend; starting the server and loading the model are not timed."""
    import socket
    import subprocess
    import urllib.request

    from intentrec.semantic.llm import get_llm
    from intentrec.semantic.llm.models import ensure_shipped_model

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(binary), "-m", str(ensure_shipped_model(model_name)), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(n_parallel), "--ctx-size", str(2048 * n_parallel), "--cont-batching"]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads), "--threads-batch", str(threads)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise SystemExit(f"llama-server exited with {proc.returncode}:\n{tail}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:  # refused while starting, 503 while loading
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server was not ready after 180 s")
                time.sleep(0.5)
            llm = get_llm(f"http://127.0.0.1:{port}/v1#{model_name}", concurrency=n_parallel)
            started = time.perf_counter()
            gens = llm.generate(prompts, decoding)
            seconds = time.perf_counter() - started
            llm.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return seconds, gens


def main() -> None:
    args = _args()
    os.environ.setdefault("INTENTREC_HOME", str(Path.home() / ".cache" / "intentrec"))
    import llama_cpp

    from intentrec.data.dataset import PreparedDataset
    from intentrec.semantic.infer import plan_prompts, run_inference
    from intentrec.semantic.llm import get_llm
    from intentrec.semantic.llm.base import DecodingConfig
    from intentrec.semantic.llm.models import installed_models
    from intentrec.semantic.prompts import get_template
    from intentrec.semantic.store import AnswerStore, dataset_fingerprint

    decoding = DecodingConfig()
    threads = {"n_threads": args.threads} if args.threads else {}
    ds = PreparedDataset(args.dataset)
    tmpl = get_template(args.template)
    rows = np.arange(min(args.n, len(ds.examples("test"))))

    naive_llm = get_llm(args.model, n_parallel=1, reuse_prefix=False, sort_prompts=False, **threads)
    plan = plan_prompts(ds, tmpl, naive_llm.identity(), decoding, split="test", rows=rows)
    prompts = [plan.messages[k] for k in plan.keys]
    n_unique = len(plan.messages)
    _log(f"{len(prompts)} prompts, {n_unique} distinct; naive run on {args.model}")
    naive_s, naive_gens = _naive(naive_llm, prompts, decoding)
    naive_llm.close()
    rows_out = [("naive: one at a time, fresh KV cache, no de-duplication", len(prompts), naive_s)]
    _log(f"naive: {naive_s:.1f} s")

    if args.ablations:
        unique_prompts = [plan.messages[k] for k in plan.messages]
        if n_unique < len(prompts):  # otherwise it is the naive run again
            llm = get_llm(args.model, n_parallel=1, reuse_prefix=False, sort_prompts=False, **threads)
            s, _ = _naive(llm, unique_prompts, decoding)
            llm.close()
            rows_out.append(("de-duplication only", n_unique, s))
            _log(f"dedup: {s:.1f} s")
        llm = get_llm(args.model, n_parallel=1, **threads)
        started = time.perf_counter()
        llm.generate(unique_prompts, decoding)
        s = time.perf_counter() - started
        llm.close()
        rows_out.append(("de-duplication + sorted prefix reuse, 1 sequence", n_unique, s))
        _log(f"dedup+reuse: {s:.1f} s")

    def engine(share_prefix: bool, template: str | None = None) -> tuple[float, int, dict[str, int]]:
        template = template or args.template
        llm = get_llm(args.model, n_parallel=args.n_parallel, share_prefix=share_prefix, **threads)
        with tempfile.TemporaryDirectory() as tmp, AnswerStore(Path(tmp) / "answers.sqlite") as store:
            started = time.perf_counter()
            report = run_inference(
                args.dataset,
                template=template,
                llm=llm,
                split="test",
                limit=len(rows),
                decoding=decoding,
                store=store,
                progress=False,
            )
            seconds = time.perf_counter() - started
            answers = store.answers_for_examples(
                dataset_fingerprint(args.dataset), template, report.model_sha256, plan.example_ids.tolist()
            )
        counters = dict(llm.counters)
        llm.close()
        n_same = sum(answers[e].answer == g.text for e, g in zip(plan.example_ids.tolist(), naive_gens) if e in answers)
        return seconds, n_same, counters

    engine_label = f"intentrec engine: de-duplication + sorted prefix reuse + {args.n_parallel} parallel sequences"
    token_rows = []
    if args.share_ablation:
        s, n_same, counters = engine(share_prefix=False)
        rows_out.append((engine_label + ", shared prefix off", len(prompts), s))
        token_rows.append(("engine, shared prefix off", s, n_same, counters))
        _log(f"engine without shared prefix: {s:.1f} s; {n_same}/{len(prompts)} answers identical to naive")
    engine_s, same, counters = engine(share_prefix=True)
    rows_out.append((engine_label + (", shared prefix on" if args.share_ablation else ""), len(prompts), engine_s))
    token_rows.append(("engine, shared prefix on", engine_s, same, counters))
    _log(f"engine: {engine_s:.1f} s; {same}/{len(prompts)} answers identical to naive; {counters}")
    for other in [t for t in args.also_templates.split(",") if t]:
        s, _, c = engine(share_prefix=True, template=other)
        rows_out.append((f"{engine_label}, template `{other}`", len(prompts), s))
        token_rows.append((f"engine, template `{other}`", s, None, c))
        _log(f"engine with {other}: {s:.1f} s; {c}")

    server_same = server_tokens = naive_tokens = None
    if args.llama_server:
        unique = [plan.messages[k] for k in plan.messages]
        _log(f"llama-server --parallel {args.n_parallel}: {len(unique)} distinct prompts")
        server_s, server_gens = _llama_server(
            args.llama_server, args.model, unique, decoding, args.n_parallel, args.threads
        )
        naive_by_key = dict(zip(plan.keys, naive_gens, strict=True))
        server_same = sum(naive_by_key[k].text == g.text for k, g in zip(plan.messages, server_gens, strict=True))
        rows_out.append((f"llama-server --parallel {args.n_parallel} via the OpenAI backend", len(unique), server_s))
        server_tokens = sum(g.completion_tokens for g in server_gens) / len(server_gens)
        naive_tokens = sum(g.completion_tokens for g in naive_gens) / len(naive_gens)
        _log(
            f"llama-server: {server_s:.1f} s; {server_same}/{len(unique)} answers identical to naive; "
            f"{server_tokens:.1f} vs {naive_tokens:.1f} generated tokens per answer"
        )

    hf_row = None
    if args.hf_n:
        sample = [plan.messages[k] for k in list(plan.messages)[: args.hf_n]]
        _log(f"Hugging Face generate, one at a time: {len(sample)} prompts on {args.model}")
        hf_s, hf_tokens = _hf_generate(args.model, sample, decoding, args.threads)
        hf_row = (len(sample), hf_s, hf_tokens)
        _log(f"HF generate: {hf_s / len(sample):.2f} s/prompt")
    hf_batched = None
    if args.hf_n and args.hf_batch > 1:
        _log(f"Hugging Face generate, {args.hf_batch} at a time (left-padded): {len(sample)} prompts")
        hf_b_s, hf_b_tokens = _hf_generate(args.model, sample, decoding, args.threads, batch=args.hf_batch)
        hf_batched = (hf_b_s, hf_b_tokens)
        _log(f"HF generate batched: {hf_b_s / len(sample):.2f} s/prompt")

    per_prompt = []
    installed = installed_models()
    for name in [m for m in args.per_prompt_models.split(",") if m]:
        if not installed.get(name):
            per_prompt.append((name, None, None, None))
            continue
        llm = get_llm(name, n_parallel=1, reuse_prefix=False, sort_prompts=False, **threads)
        sample = [plan.messages[k] for k in list(plan.messages)[: args.per_prompt_n]]
        s, gens = _naive(llm, sample, decoding)
        llm.close()
        llm = get_llm(name, n_parallel=args.n_parallel, **threads)
        many = [plan.messages[k] for k in list(plan.messages)[: 2 * args.n_parallel]]
        started = time.perf_counter()
        llm.generate(many, decoding)
        s_engine = (time.perf_counter() - started) / len(many)
        llm.close()
        tok = sum(g.completion_tokens for g in gens)
        per_prompt.append((name, s / len(sample), tok / s, s_engine))
        _log(f"{name}: {s / len(sample):.2f} s/prompt naive, {s_engine:.2f} s/prompt engine")

    quality = []
    for name in [m for m in args.quality_models.split(",") if m]:
        if not installed.get(name) or args.quality_n <= 0:
            continue
        llm = get_llm(name, n_parallel=args.n_parallel, **threads)
        with tempfile.TemporaryDirectory() as tmp, AnswerStore(Path(tmp) / "answers.sqlite") as store:
            rep = run_inference(
                args.dataset,
                template=args.template,
                llm=llm,
                split="test",
                sample=args.quality_n,
                seed=0,
                decoding=decoding,
                store=store,
                progress=False,
            )
        llm.close()
        quality.append((name, rep))
        _log(f"{name}: {rep.status_counts}, echoes {rep.echoes}/{rep.covered}")

    naive_rate = len(prompts) / naive_s
    lines = [
        "# LLM inference throughput",
        "",
        f"Produced by `benchmarks/llm_throughput.py` on {time.strftime('%Y-%m-%d')}: "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), load average at the end "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"llama-cpp-python {llama_cpp.__version__} ({_build_flags()}).",
        "",
        "```",
        "intentrec prepare generic ../shared/data/amazon/beauty-2014-5core --protocol llm4sbr-beauty --out /tmp/beauty",
        "python benchmarks/llm_throughput.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Model `{args.model}`, template `{args.template}`, the first {len(prompts)} test examples of "
        f"llm4sbr-beauty ({n_unique} distinct prompts), greedy decoding, max_tokens {decoding.max_tokens}, "
        f"repeat_penalty {decoding.repeat_penalty}. Model loading is not timed.",
        "",
        "| mode | prompts generated | seconds | examples/s | speedup |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, n, s in rows_out:
        lines.append(f"| {label} | {n} | {s:.1f} | {len(prompts) / s:.2f} | {naive_s / s:.2f}× |")
    lines += [
        "",
        "Prompt tokens of the engine rows: submitted (distinct prompts), evaluated (after prefix reuse), and "
        "received by a KV copy of the shared prefix instead of being evaluated.",
        "",
        "| engine run | seconds | answers = naive | submitted | evaluated | shared by copy | KV copies |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s, n_same, c in token_rows:
        lines.append(
            f"| {label} | {s:.1f} | {'–' if n_same is None else f'{n_same}/{len(prompts)}'} | {c['prompt_tokens']} | "
            f"{c['prompt_tokens_evaluated']} | {c['prompt_tokens_shared']} | {c['kv_copies']} |"
        )
    if hf_row is not None:
        n_hf, hf_s, hf_tokens = hf_row
        engine_per_prompt = engine_s / n_unique
        lines += [
            "",
            f"The seeds' way, Hugging Face `generate` one prompt at a time on the same GGUF loaded into "
            f"`transformers` (float32), the first {n_hf} distinct prompts: **{hf_s / n_hf:.2f} s/prompt** "
            f"({hf_tokens / hf_s:.1f} generated tokens/s). Per distinct prompt the engine took "
            f"{engine_per_prompt:.2f} s: **{hf_s / n_hf / engine_per_prompt:.2f}×** faster.",
        ]
        if hf_batched is not None:
            hf_b_s, hf_b_tokens = hf_batched
            lines.append(
                f"Batched, {args.hf_batch} prompts per `generate` call (left padding, sorted by length), the same "
                f"prompts: **{hf_b_s / n_hf:.2f} s/prompt** ({hf_b_tokens / hf_b_s:.1f} generated tokens/s); "
                f"the engine is **{hf_b_s / n_hf / engine_per_prompt:.2f}×** that."
            )
    lines += [
        "",
        f"examples/s counts all {len(prompts)} examples answered (duplicates are answered once and shared). "
        f"{same} of {len(prompts)} engine answers are byte-identical to the naive ones "
        "(greedy decoding; the rest differ by floating-point rounding between batch shapes)."
        + (
            f" {server_same} of {n_unique} llama-server answers equal the naive ones; it generated "
            f"{server_tokens:.1f} tokens per answer, naive {naive_tokens:.1f}."
            if server_same is not None
            else ""
        ),
    ]
    if per_prompt:
        lines += [
            "",
            "## Seconds per prompt of each shipped model",
            "",
            f"Naive: {args.per_prompt_n} distinct prompts one at a time. Engine: {2 * args.n_parallel} distinct "
            f"prompts with prefix reuse and {args.n_parallel} parallel sequences.",
            "",
            "| model | s/prompt naive | generated tokens/s naive | s/prompt engine |",
            "|---|---:|---:|---:|",
        ]
    for name, spp, tps, s_engine in per_prompt:
        if spp is None:
            lines.append(f"| {name} | not installed | | |")
        else:
            lines.append(f"| {name} | {spp:.2f} | {tps:.1f} | {s_engine:.2f} |")
    if quality:
        lines += [
            "",
            f"## Answer quality on {args.quality_n} sampled test prompts (`{args.template}`)",
            "",
            "Statuses from the template's parser; an echo is an answer that repeats a title of the session "
            "(see `intentrec.semantic.infer.is_echo`).",
            "",
            "| model | ok | empty | garbage | echoes a session title | mean completion tokens |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, rep in quality:
            c = rep.status_counts
            mean_tok = rep.completion_tokens / rep.generated if rep.generated else 0.0
            lines.append(
                f"| {name} | {c.get('ok', 0)} | {c.get('empty', 0)} | {c.get('garbage', 0)} | "
                f"{rep.echoes}/{rep.covered} | {mean_tok:.1f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from intentrec.io import atomic_open

    with atomic_open(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    _log(
        f"wrote {args.out}; engine speedup {naive_s / engine_s:.2f}× ({len(prompts) / engine_s:.2f} vs {naive_rate:.2f} examples/s)"
    )


if __name__ == "__main__":
    main()
