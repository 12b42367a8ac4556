"""`make bench-peers`: Tolk, transformers and llama.cpp decoding the same Llama weights, in one run.

A benchmark, not a test: it prints figures and ratios and writes them as JSON; nothing here passes
or fails on speed.

What runs, for each repeat and each format, one after the other in the same process tree:

* Tolk: `tolk --threads T model bench MODEL_DIR --engine both --repeats 1 ...`, one process per
  timed run. `--engine both` times libtorch ("tch") and Tolk's own SIMD decode step ("native",
  prefill on libtorch, its KV cache copied across) on the same prompt; at f32 and bf16,
  `--compare-python` also times transformers' generate() in that process
  (tests/reference/bench_transformers.py). Each process warms up on 8 prompt tokens first.
* llama.cpp through llama-cpp-python on GGUF files made from the same Hugging Face folder by
  llama.cpp's own tools: vendor/llama.cpp/convert_hf_to_gguf.py of the llama-cpp-python source
  distribution for F32, BF16, F16 and Q8_0, and `llama_model_quantize` (vendor/llama.cpp/include/
  llama.h, through the Python bindings) from the F32 file for Q4_0 and Q4_1, with llama.cpp's
  default choices of which tensors stay at higher precision. The model is loaded afresh for each
  timed run and warmed up the way Tolk is.

Formats compared (Tolk native against llama.cpp):

    f32   Tolk native f32,  tch f32,  transformers f32   vs  llama.cpp F32
    bf16  Tolk native bf16, tch bf16, transformers bf16  vs  llama.cpp BF16, and F16 beside it
          (Tolk has no f16 native kernel)
    int8  Tolk native --quant int8 (one scale per row)   vs  llama.cpp Q8_0
    int4  Tolk native --quant int4 --group-size 32       vs  llama.cpp Q4_0 and Q4_1

Protocol, the one `tolk model bench` uses (runtime/src/model_cmd.rs, `bench`): batch 1, a fixed
pseudo-random prompt of 128 token ids ((i * 2654435761) mod vocab, so every engine sees the same
ids without a tokenizer), then 64 greedy new tokens. Prefill tokens/s = prompt tokens / time from
the start to the first greedy token (prompt forward, last logits, argmax); decode tokens/s =
(new tokens - 1) / time of the steps after it (one-token forward, logits, argmax). For llama.cpp the forward is
`Llama.eval` (llama_decode) and the argmax is over `llama_get_logits_ith(ctx, -1)`: no sampler
chain, as Tolk's native path takes the argmax of its logits. Best and median over --repeats runs
are reported, with every run's raw figures in the JSON.

Greedy agreement: Tolk's f32 greedy continuation of a short English prompt (`tolk model generate`,
on libtorch; `tolk model bench` reports per format whether the native tokens equal libtorch's),
tokenized by `tolk model logits --json`, against llama.cpp's greedy tokens from the same prompt
ids at every format; the count is the number of leading llama.cpp tokens whose text is a prefix of
Tolk's. It is printed, never checked: at low precision the tokens are expected to part.

Usage (what `make bench-peers` runs):
    python tests/reference/bench_peers.py --model-dir target/reference/smollm2/model \
        --tolk target/release/tolk --llama-cpp-src ~/.cache/tolk/wheels/llama_cpp_python-0.3.36 \
        --cache target/bench-peers --out target/bench-peers/bench-peers.json --threads 2 --repeats 3
    python tests/reference/bench_peers.py --report target/bench-peers/bench-peers.json  # reprint
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Tolk's arguments per format, whether transformers runs beside it, and the llama.cpp files that
# stand against it (the first is the one the ratios of the format's main row use).
FORMATS = {
    "f32": {"tolk": ["--dtype", "f32"], "transformers": True, "gguf": ["F32"]},
    "bf16": {"tolk": ["--dtype", "bf16"], "transformers": True, "gguf": ["BF16", "F16"]},
    "int8": {"tolk": ["--quant", "int8"], "transformers": False, "gguf": ["Q8_0"]},
    "int4": {
        "tolk": ["--quant", "int4", "--group-size", "32"],
        "transformers": False,
        "gguf": ["Q4_0", "Q4_1"],
    },
}
# How each GGUF is made: the converter's --outtype, or a llama_ftype name quantized from F32.
GGUF_RECIPES = {
    "F32": ("convert", "f32"),
    "BF16": ("convert", "bf16"),
    "F16": ("convert", "f16"),
    "Q8_0": ("convert", "q8_0"),
    "Q4_0": ("quantize", "LLAMA_FTYPE_MOSTLY_Q4_0"),
    "Q4_1": ("quantize", "LLAMA_FTYPE_MOSTLY_Q4_1"),
}
NOTES = {
    "F16": "llama.cpp F16 beside bf16: Tolk has no f16 native kernel",
}
AGREE_PROMPT = "Once upon a time, in a small village,"


def fail(msg: str) -> None:
    sys.exit(f"bench_peers: {msg}")


def need(module: str, package: str, why: str):
    """Imports `module`, or stops with a message naming the missing package."""
    try:
        return __import__(module)
    except ImportError as e:
        fail(
            f"the Python package `{package}` is missing from {sys.executable} ({why}): {e}. "
            "`make bench-peers` installs it; see the Makefile's bench-peers target."
        )


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features of /proc/cpuinfo that the kernels of both engines care about."""
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni",
              "avx_vnni", "asimd", "asimddp")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def bench_prompt(vocab: int, n: int) -> list[int]:
    """The prompt ids of `tolk model bench` and bench_transformers.py."""
    return [(i * 2654435761) % vocab for i in range(n)]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": max(values), "runs": values}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stderr_to(path: Path):
    """Sends file descriptor 2 (where llama.cpp logs) to `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# ---- GGUF files ----------------------------------------------------------------------------


def make_gguf(kind: str, model_dir: Path, cache: Path, converter: Path, threads: int,
              llama_cpp) -> Path:
    """Returns the cached GGUF of `kind`, making it first if missing or older than the weights."""
    stem = model_dir.parent.name if model_dir.name == "model" else model_dir.name
    out = cache / f"{stem}-{kind}.gguf"
    weights = max(p.stat().st_mtime for p in model_dir.iterdir())
    if out.exists() and out.stat().st_mtime >= weights:
        return out
    how, what = GGUF_RECIPES[kind]
    tmp = out.with_suffix(".gguf.part")
    tmp.unlink(missing_ok=True)
    logfile = cache / f"{stem}-{kind}.log"
    logfile.unlink(missing_ok=True)
    log(f"bench_peers: making {out.name} ({how} {what}; log in {logfile})")
    if how == "convert":
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(logfile, "wb") as f:
            r = subprocess.run(
                [sys.executable, str(converter), str(model_dir), "--outfile", str(tmp),
                 "--outtype", what],
                stdout=f, stderr=subprocess.STDOUT, env=env,
            )
        if r.returncode != 0:
            raise RuntimeError(f"{converter.name} --outtype {what} failed (exit {r.returncode}); "
                               f"see {logfile}")
    else:
        source = make_gguf("F32", model_dir, cache, converter, threads, llama_cpp)
        params = llama_cpp.llama_model_quantize_default_params()
        params.nthread = threads
        params.ftype = getattr(llama_cpp, what)
        llama_cpp.llama_backend_init()
        with stderr_to(logfile):
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                                params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {what} returned {rc}; see {logfile}")
    tmp.replace(out)
    return out


def gguf_types(info: dict) -> str:
    """'210 Q4_0, 61 F32, 1 Q8_0 (token_embd.weight Q8_0)'."""
    types = sorted(info["tensor_types"].items(), key=lambda kv: -kv[1]["tensors"])
    text = ", ".join(f"{v['tensors']} {k}" for k, v in types)
    embd = info["selected_tensors"].get("token_embd.weight")
    return f"{text} (token_embd.weight {embd})" if embd else text


def gguf_info(path: Path, gguf) -> dict:
    """Tensor types (count and bytes per type) and the bytes of all tensor data."""
    reader = gguf.GGUFReader(str(path))
    types: dict[str, dict] = {}
    total = 0
    for t in reader.tensors:
        name = t.tensor_type.name
        entry = types.setdefault(name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += int(t.n_bytes)
        total += int(t.n_bytes)
    per_tensor = {t.name: t.tensor_type.name for t in reader.tensors
                  if t.name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight",
                                "blk.0.ffn_down.weight")}
    return {"path": str(path), "file_bytes": path.stat().st_size, "tensor_bytes": total,
            "tensor_types": types, "selected_tensors": per_tensor}


# ---- llama.cpp timing ----------------------------------------------------------------------


class LlamaCpp:
    """One GGUF loaded through llama-cpp-python, decoded greedily by argmax of the logits."""

    def __init__(self, llama_cpp, np, path: Path, threads: int, n_ctx: int):
        self.llama_cpp, self.np = llama_cpp, np
        self.llm = llama_cpp.Llama(model_path=str(path), n_threads=threads,
                                   n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                                   logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()

    def argmax(self) -> int:
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(self.np.ctypeslib.as_array(ptr, shape=(self.vocab,)).argmax())

    def generate(self, prompt: list[int], new_tokens: int) -> dict:
        llm = self.llm
        llm.reset()  # the next eval drops the KV cache from position 0 on
        start = time.perf_counter()
        llm.eval(prompt)
        tokens = [self.argmax()]
        first = time.perf_counter()
        while len(tokens) < new_tokens:
            llm.eval([tokens[-1]])
            tokens.append(self.argmax())
        end = time.perf_counter()
        return {"prefill_tokens_per_s": len(prompt) / (first - start),
                "decode_tokens_per_s": (len(tokens) - 1) / max(end - first, 1e-9),
                "tokens": tokens}

    def close(self) -> None:
        self.llm.close()


def time_llama_cpp(llama_cpp, np, path: Path, prompt: list[int], new_tokens: int,
                   threads: int) -> dict:
    runner = LlamaCpp(llama_cpp, np, path, threads, n_ctx=512)
    try:
        runner.generate(prompt[:8], new_tokens)  # warm-up, as `tolk model bench` does
        return runner.generate(prompt, new_tokens)
    finally:
        runner.close()


# ---- Tolk ----------------------------------------------------------------------------------


def run_tolk(tolk: Path, model_dir: Path, fmt: str, threads: int, prompt_tokens: int,
             new_tokens: int) -> dict:
    spec = FORMATS[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [str(tolk), "--threads", str(threads), "model", "bench", str(model_dir),
               "--engine", "both", *spec["tolk"], "--repeats", "1",
               "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens),
               "--json", str(out)]
        if spec["transformers"]:
            cmd += ["--compare-python", sys.executable]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
        return json.loads(out.read_text())


def tolk_reference(tolk: Path, model_dir: Path, threads: int, n: int) -> dict:
    """Tolk's f32 prompt ids and greedy continuation (text) of AGREE_PROMPT."""
    base = [str(tolk), "--threads", str(threads), "model"]
    r = subprocess.run(base + ["logits", str(model_dir), "--prompt", AGREE_PROMPT, "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"tolk model logits failed: {r.stderr}")
    ids = json.loads(r.stdout.strip().splitlines()[-1])["prompt_ids"]
    r = subprocess.run(base + ["generate", str(model_dir), "--prompt", AGREE_PROMPT,
                               "--max-new-tokens", str(n), "--ignore-eos"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith(AGREE_PROMPT):
        fail(f"tolk model generate failed: {r.stdout}\n{r.stderr}")
    text = r.stdout[len(AGREE_PROMPT):]
    text = text[:-1] if text.endswith("\n") else text  # the newline generate prints at the end
    return {"prompt": AGREE_PROMPT, "prompt_ids": ids, "new_tokens": n, "text": text}


def agreement(tokenizer, reference: dict, tokens: list[int]) -> int:
    """Leading tokens of `tokens` whose decoded text is a prefix of Tolk's continuation."""
    same = 0
    for k in range(1, len(tokens) + 1):
        if not reference["text"].startswith(tokenizer.decode(tokens[:k], skip_special_tokens=True)):
            break
        same = k
    return same


# ---- report --------------------------------------------------------------------------------


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def figure(d: dict | None, key: str, stat: str) -> float | None:
    return None if d is None else d[key][stat]


def print_table(report: dict, stat: str) -> None:
    head = ["format", "llama.cpp", "l.cpp pre", "l.cpp dec", "native pre", "native dec",
            "nat/l.cpp dec", "nat/l.cpp pre", "tch pre", "tch dec", "tf pre", "tf dec",
            "tch/tf pre", "tch/tf dec", "agree"]
    rows = []
    for fmt, entry in report["formats"].items():
        tolk = entry["tolk"]
        native, tch, tf = tolk["native"], tolk["tch"], tolk.get("transformers")
        # At int8/int4 tch runs f32 on the dequantized weights: not a figure of the format.
        same_values = FORMATS[fmt]["transformers"]
        for kind in FORMATS[fmt]["gguf"]:
            lc = entry["llama_cpp"].get(kind)
            lc_fig = lc if lc and "error" not in lc else None
            a = lc.get("agree_with_tolk_f32") if lc_fig else None
            rows.append([
                fmt, kind + ("*" if kind in NOTES else ""),
                fmt_rate(figure(lc_fig, "prefill_tokens_per_s", stat)),
                fmt_rate(figure(lc_fig, "decode_tokens_per_s", stat)),
                fmt_rate(figure(native, "prefill_tokens_per_s", stat)),
                fmt_rate(figure(native, "decode_tokens_per_s", stat)),
                fmt_ratio(figure(native, "decode_tokens_per_s", stat),
                          figure(lc_fig, "decode_tokens_per_s", stat)),
                fmt_ratio(figure(native, "prefill_tokens_per_s", stat),
                          figure(lc_fig, "prefill_tokens_per_s", stat)),
                fmt_rate(figure(tch, "prefill_tokens_per_s", stat)) if same_values else "-",
                fmt_rate(figure(tch, "decode_tokens_per_s", stat)) if same_values else "-",
                fmt_rate(figure(tf, "prefill_tokens_per_s", stat)),
                fmt_rate(figure(tf, "decode_tokens_per_s", stat)),
                fmt_ratio(figure(tch, "prefill_tokens_per_s", stat),
                          figure(tf, "prefill_tokens_per_s", stat)) if tf else "-",
                fmt_ratio(figure(tch, "decode_tokens_per_s", stat),
                          figure(tf, "decode_tokens_per_s", stat)) if tf else "-",
                "-" if a is None else f"{a}/{report['agreement']['new_tokens']}",
            ])
            if lc and "error" in lc:
                rows[-1][2] = "failed"
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

    def line(r: list) -> str:  # the first two columns to the left, figures to the right
        return "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def print_report(report: dict) -> None:
    p = report["protocol"]
    print(f"\n== bench-peers: {report['model_dir']}")
    print(f"cpu {report['cpu']} ({' '.join(report.get('cpu_flags', []))}), "
          f"{report['threads']} threads, {report['date']}, "
          f"load average at start {report['loadavg_start']}")
    v = report["versions"]
    print(f"llama-cpp-python {v['llama_cpp_python']}, torch {v['torch']}, "
          f"transformers {v['transformers']}, tolk {v['tolk_commit']}")
    print(f"batch 1, {p['prompt_tokens']}-token prompt, {p['new_tokens']} greedy tokens, "
          f"{p['repeats']} run(s) per engine and format; tokens/s")
    for stat in (["median", "best"] if p["repeats"] > 1 else ["median"]):
        print(f"\n{stat} of {p['repeats']} run(s):")
        print_table(report, stat)
    print("\npre/dec: prefill/decode tokens/s. l.cpp: llama.cpp (llama-cpp-python). native: "
          "Tolk's own decode step (its prefill is libtorch's); tch: Tolk on libtorch; tf: "
          "transformers generate(), in the same process as tch.")
    print("int8/int4: tch runs f32 on the dequantized weights, so its figures are left out here "
          "(they are in the JSON).")
    for kind, note in NOTES.items():
        print(f"{kind}*: {note}.")
    print(f"agree: leading greedy tokens of llama.cpp identical to Tolk's f32 ones "
          f"(prompt {AGREE_PROMPT!r}); printed only, not checked.")
    bw = report["bandwidth"]
    print(f"\nread bandwidth (Tolk's measure): median {bw['read_bandwidth_gb_s']['median']:.2f} "
          f"GB/s, runs {', '.join(f'{x:.2f}' for x in bw['read_bandwidth_gb_s']['runs'])}")
    print("decode ceiling = bandwidth / bytes read per token, and the share reached (median):")
    for fmt, entry in report["formats"].items():
        n = entry["tolk"]["native"]
        parts = [f"Tolk native {n['weight_bytes_per_token'] / 2**20:.0f} MiB, ceiling "
                 f"{n['ceiling_tokens_per_s']:.1f} tok/s, "
                 f"{100 * n['decode_tokens_per_s']['median'] / n['ceiling_tokens_per_s']:.0f} %"]
        for kind, lc in entry["llama_cpp"].items():
            if "error" in lc:
                continue
            parts.append(f"llama.cpp {kind} {lc['weight_bytes_per_token'] / 2**20:.0f} MiB, "
                         f"{100 * lc['ceiling_fraction']:.0f} %")
        print(f"  {fmt:5} " + "; ".join(parts))
    print("llama.cpp files (tensors by type):")
    for kind, g in report["gguf"].items():
        if "error" in g:
            print(f"  {kind:5} NOT MEASURED: {g['error']}")
        else:
            print(f"  {kind:5} {g['file_bytes'] / 2**20:.0f} MiB, {gguf_types(g)}, "
                  f"made by {g['made_by']}")
    print(f"\nJSON: {report['out']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path,
                    help="Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("--tolk", type=Path, default=ROOT / "target/release/tolk",
                    help="the tolk binary")
    ap.add_argument("--llama-cpp-src", type=Path,
                    help="unpacked llama-cpp-python source distribution (for vendor/llama.cpp/"
                         "convert_hf_to_gguf.py); default: "
                         "~/.cache/tolk/wheels/llama_cpp_python-VERSION")
    ap.add_argument("--cache", type=Path, default=ROOT / "target/bench-peers",
                    help="where the GGUF files are made and kept")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default: CACHE/bench-peers.json)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine and format")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help=f"comma-separated subset of {','.join(FORMATS)}")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--agree-tokens", type=int, default=32,
                    help="greedy tokens of the agreement check")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="print the tables of a JSON written earlier, and run nothing")
    a = ap.parse_args()
    if a.report:
        print_report(json.loads(a.report.read_text()))
        return
    if a.model_dir is None:
        fail("--model-dir is required (unless --report)")
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        fail(f"--formats: unknown {unknown}; choose from {', '.join(FORMATS)}")
    if a.repeats < 1 or a.threads < 1:
        fail("--repeats and --threads must be at least 1")
    if a.prompt_tokens + a.new_tokens > 512:
        fail("prompt + new tokens must fit llama.cpp's 512-token context")
    out = a.out or a.cache / "bench-peers.json"
    # At most --threads threads anywhere: llama.cpp's OpenMP pool and the converter's torch.
    os.environ["OMP_NUM_THREADS"] = str(a.threads)

    np = need("numpy", "numpy", "llama.cpp logits")
    tokenizers = need("tokenizers", "tokenizers", "decoding the agreement check's tokens")
    gguf = need("gguf", "gguf", "reading the GGUF tensor types")
    llama_cpp = need("llama_cpp", "llama-cpp-python",
                     "llama.cpp's Python bindings, built from source by `make bench-peers`")
    for dist in ("torch", "transformers"):
        if version(dist) is None:
            fail(f"the Python package `{dist}` is missing from {sys.executable} "
                 "(tolk model bench --compare-python and the GGUF converter need it)")
    lc_version = version("llama_cpp_python") or llama_cpp.__version__
    src = a.llama_cpp_src or Path.home() / f".cache/tolk/wheels/llama_cpp_python-{lc_version}"
    converter = src / "vendor/llama.cpp/convert_hf_to_gguf.py"
    if not converter.is_file():
        fail(f"llama.cpp's converter {converter} is missing: give --llama-cpp-src, the unpacked "
             f"llama-cpp-python {lc_version} source distribution")
    if not os.access(a.tolk, os.X_OK):
        fail(f"{a.tolk} is not an executable tolk binary (cargo build --release -p tolk-runtime)")
    model_dir = a.model_dir.resolve()
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompt = bench_prompt(config["vocab_size"], a.prompt_tokens)
    a.cache.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or None

    report = {
        "model_dir": str(model_dir),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "threads": a.threads,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "host": platform.platform(),
        "versions": {
            "llama_cpp_python": lc_version,
            "torch": version("torch"),
            "transformers": version("transformers"),
            "gguf": version("gguf"),
            "python": platform.python_version(),
            "tolk_commit": commit,
        },
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "llama_cpp_converter": str(converter),
        "protocol": {
            "batch": 1, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
            "repeats": a.repeats, "prompt_ids": "(i * 2654435761) % vocab_size",
            "warm_up": "8 prompt tokens + new_tokens, before each timed run",
            "llama_cpp": {"n_ctx": 512, "n_batch": 512, "logits_all": False,
                          "flash_attn": False, "greedy": "argmax of llama_get_logits_ith(-1)"},
        },
        "gguf": {},
        "formats": {},
        "raw": {"tolk": {}, "llama_cpp": {}},
        "out": str(out),
    }

    # The GGUF files, made once and cached; a format llama.cpp cannot make is reported, not hidden.
    kinds = [k for f in formats for k in FORMATS[f]["gguf"]]
    paths = {}
    for kind in kinds:
        try:
            paths[kind] = make_gguf(kind, model_dir, a.cache, converter, a.threads, llama_cpp)
            report["gguf"][kind] = gguf_info(paths[kind], gguf)
            report["gguf"][kind]["made_by"] = " ".join(map(str, GGUF_RECIPES[kind]))
        except Exception as e:  # noqa: BLE001 - recorded in the report and printed
            log(f"bench_peers: llama.cpp {kind}: {e}")
            report["gguf"][kind] = {"error": str(e)}

    log("bench_peers: agreement check (Tolk f32 greedy tokens)")
    reference = tolk_reference(a.tolk, model_dir, a.threads, a.agree_tokens)
    report["agreement"] = dict(reference)
    report["agreement"]["llama_cpp"] = {}
    for kind, path in paths.items():
        runner = LlamaCpp(llama_cpp, np, path, a.threads, n_ctx=512)
        try:
            got = runner.generate(reference["prompt_ids"], a.agree_tokens)["tokens"]
        finally:
            runner.close()
        report["agreement"]["llama_cpp"][kind] = {
            "tokens": got, "text": tokenizer.decode(got, skip_special_tokens=True),
            "agree": agreement(tokenizer, reference, got),
        }

    # Timed runs: repeats outermost, so that a slow spell of the machine hits every engine.
    raw_tolk = {f: [] for f in formats}
    raw_lc = {k: [] for k in paths}
    for rep in range(a.repeats):
        for fmt in formats:
            log(f"bench_peers: run {rep + 1}/{a.repeats}, {fmt}: tolk")
            raw_tolk[fmt].append(run_tolk(a.tolk, model_dir, fmt, a.threads, a.prompt_tokens,
                                          a.new_tokens))
            for kind in FORMATS[fmt]["gguf"]:
                if kind in paths:
                    log(f"bench_peers: run {rep + 1}/{a.repeats}, {fmt}: llama.cpp {kind}")
                    raw_lc[kind].append(time_llama_cpp(llama_cpp, np, paths[kind], prompt,
                                                       a.new_tokens, a.threads))
    report["raw"] = {"tolk": raw_tolk, "llama_cpp": raw_lc}

    bandwidths = [r["read_bandwidth_gb_s"] for f in formats for r in raw_tolk[f]]
    bandwidth = statistics.median(bandwidths) * 1e9
    report["bandwidth"] = {
        "read_bandwidth_gb_s": summary(bandwidths),
        "how": "Tolk's read_bandwidth: a full reduction over a buffer of at least 512 MiB, "
               "measured in every tolk model bench run",
    }

    def engine(runs: list[dict], pick) -> dict | None:
        got = [pick(r) for r in runs]
        if not got or got[0] is None:
            return None
        e = {k: summary([g[k] for g in got])
             for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
        e["weights"] = got[0].get("weights")
        e["weight_bytes_per_token"] = got[0].get("weight_bytes_per_token")
        if e["weight_bytes_per_token"]:
            e["ceiling_tokens_per_s"] = bandwidth / e["weight_bytes_per_token"]
        return e

    for fmt in formats:
        runs = raw_tolk[fmt]
        entry = {
            "tolk": {
                "native": engine(runs, lambda r: r["native"]),
                "tch": engine(runs, lambda r: r),
                "tokens_agree_native_tch": [r.get("tokens_agree") for r in runs],
                "tokens_identical_prefix_native_tch": [r.get("tokens_identical_prefix")
                                                       for r in runs],
            },
            "llama_cpp": {},
            "ratios": {},
        }
        if FORMATS[fmt]["transformers"]:
            entry["tolk"]["transformers"] = engine(runs, lambda r: r.get("transformers"))
            entry["tolk"]["transformers_version"] = runs[0]["transformers"].get("version")
        native = entry["tolk"]["native"]
        for kind in FORMATS[fmt]["gguf"]:
            if kind not in paths:
                entry["llama_cpp"][kind] = {"error": report["gguf"][kind]["error"]}
                continue
            lc = engine(raw_lc[kind], lambda r: r)
            lc["weights"] = gguf_types(report["gguf"][kind])
            lc["weight_bytes_per_token"] = report["gguf"][kind]["tensor_bytes"]
            lc["ceiling_tokens_per_s"] = bandwidth / lc["weight_bytes_per_token"]
            lc["ceiling_fraction"] = (lc["decode_tokens_per_s"]["median"]
                                      / lc["ceiling_tokens_per_s"])
            lc["agree_with_tolk_f32"] = report["agreement"]["llama_cpp"][kind]["agree"]
            if kind in NOTES:
                lc["note"] = NOTES[kind]
            entry["llama_cpp"][kind] = lc
            for stat in ("median", "best"):
                entry["ratios"][f"native/{kind} decode {stat}"] = (
                    native["decode_tokens_per_s"][stat] / lc["decode_tokens_per_s"][stat])
                entry["ratios"][f"native/{kind} prefill {stat}"] = (
                    native["prefill_tokens_per_s"][stat] / lc["prefill_tokens_per_s"][stat])
        tf = entry["tolk"].get("transformers")
        if tf:
            tch = entry["tolk"]["tch"]
            for stat in ("median", "best"):
                for what in ("decode", "prefill"):
                    key = f"{what}_tokens_per_s"
                    entry["ratios"][f"tch/transformers {what} {stat}"] = (
                        tch[key][stat] / tf[key][stat])
        report["formats"][fmt] = entry
    report["wall_s"] = round(time.time() - started, 1)
    out.write_text(json.dumps(report, indent=2))
    print_report(report)


if __name__ == "__main__":
    main()
