"""`rlreason convert`: Hugging Face directories and GGUF files to rlreason model directories, and back.

    convert("path/to/hf_model", "models/mine")          # config.json + *.safetensors + tokenizer.json
    convert("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smol")
    export_hf("models/smol", "exported/")               # loadable by transformers' from_pretrained
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlreason.config import ModelConfig
from rlreason.models.gguf_import import import_gguf
from rlreason.models.hf_export import DEFAULT_MAX_SHARD_BYTES, save_hf
from rlreason.models.hf_import import CheckpointError, import_hf
from rlreason.models.store import load_model, load_model_config, save_model
from rlreason.models.transformer import count_params, param_specs
from rlreason.tokenizers import HFTokenizer, SentencePieceTokenizer, Tokenizer, tokenizer_from_gguf


def _hf_directory_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer shipped in a HF model directory: tokenizer.json, else a sentencepiece tokenizer.model."""
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer.load(directory / "tokenizer.json")
    if (directory / "tokenizer.model").is_file():
        return SentencePieceTokenizer.load(directory / "tokenizer.model")
    raise CheckpointError(f"{str(directory)!r} has no tokenizer.json or tokenizer.model; a model directory needs "
                          f"its tokenizer")


def convert(source: str | Path, out_dir: str | Path, param_dtype: str = "float32",
            show_progress: bool = False) -> ModelConfig:
    """Writes the rlreason model directory `out_dir` (see `store.save_model`) from a HF directory or a .gguf
    file, with the source's tokenizer (and chat template). Returns the model's config."""
    source = Path(source)
    if source.suffix == ".gguf":
        params, cfg = import_gguf(source, param_dtype=param_dtype, show_progress=show_progress)
        tokenizer = tokenizer_from_gguf(source)
    elif source.is_dir():
        params, cfg = import_hf(source, param_dtype=param_dtype, show_progress=show_progress)
        tokenizer = _hf_directory_tokenizer(source)
    else:
        raise CheckpointError(f"{str(source)!r} is neither a Hugging Face model directory nor a .gguf file")
    save_model(out_dir, params, cfg, tokenizer)
    return cfg


def export_hf(model_dir: str | Path, out_dir: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
              show_progress: bool = False) -> ModelConfig:
    """Writes an rlreason model directory as a Hugging Face one: config.json, safetensors, tokenizer files."""
    params, cfg, tokenizer = load_model(model_dir)
    save_hf(params, cfg, out_dir, {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id},
            max_shard_bytes, show_progress)
    tokenizer.save_to(out_dir)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """`rlreason convert SOURCE OUT [--to rlreason|hf] [--dtype float32|bfloat16]`."""
    parser = argparse.ArgumentParser(
        prog="rlreason convert",
        description="Convert a Hugging Face model directory or a GGUF file into an rlreason model directory "
                    "(--to rlreason), or an rlreason model directory into a Hugging Face one (--to hf).")
    parser.add_argument("source", help="HF directory (config.json + *.safetensors) or .gguf file; with --to hf, "
                                       "an rlreason model directory")
    parser.add_argument("out", help="the directory to write")
    parser.add_argument("--to", choices=("rlreason", "hf"), default="rlreason", help="what to write")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter dtype of the rlreason model directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none is shown unless stderr is a "
                                                             "terminal)")
    args = parser.parse_args(argv)
    if args.to == "hf":
        cfg = export_hf(args.source, args.out, show_progress=not args.quiet)
        print(f"wrote Hugging Face model {args.out}: {cfg.family}, {cfg.num_layers} layers")
        return 0
    cfg = convert(args.source, args.out, args.dtype, show_progress=not args.quiet)
    _, tokenizer_file = load_model_config(args.out)
    print(f"wrote rlreason model {args.out}: {cfg.family}, {cfg.num_layers} layers, "
          f"{count_params(param_specs(cfg)) / 1e6:.1f}M parameters ({cfg.param_dtype}), tokenizer {tokenizer_file}")
    return 0
