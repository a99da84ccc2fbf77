"""On-disk cache of the frozen base model's evaluation (every run starts with it; reruns and comparisons reuse it).

    key = base_eval_key(model, streams, cfg, precision, device)   # hex digest of everything the numbers depend on
    recs = load(key)            # the base-model eval records, or None
    save(key, recs)             # atomic write to $TRUSTLORA_CACHE/base_eval/<key>.json

The key hashes the base model's weights (every parameter's bytes; computed once per loaded model), the exact
val/test token streams of every user, ``train.seq_len``, the resolved precision, the device type, ``eval.batch_size``
and ``eval.during_tokens``. Change any of them and the evaluation runs again. Records are the ``kind: eval,
model: base`` dicts of metrics.jsonl, replayed with ``cached: true`` and ``seconds``/``positions`` 0 (this run did not
spend them; ``measured_seconds`` keeps the original cost).

The trust strategies' starting points (the frozen base model's top-k on X_S for ``predictions``, its CE on each
user's trust val tokens for ``validation``: computed once per run, in the first round's trust step) are cached the
same way (``start_key`` / ``load_start`` / ``save_start``, tensors in ``<key>.pt``), keyed by the strategy, the model's
weights, the X_S and val token streams, the whole ``trust`` section, ``train.seq_len``, ``eval.batch_size``, the
precision and the device type.
"""

from __future__ import annotations

import hashlib
import io
import json

import torch

from trustlora.cache import atomic_write_bytes, atomic_write_json, cache_dir
from trustlora.config import to_dict

VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """Digest of the class and every parameter/buffer (name, shape, dtype, bytes); cached on the model object."""
    fp = getattr(model, "_trustlora_fingerprint", None)
    if fp is not None:
        return fp
    h = hashlib.blake2b(type(model).__name__.encode(), digest_size=16)
    with torch.no_grad():
        for name, t in list(model.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    fp = h.hexdigest()
    model._trustlora_fingerprint = fp
    return fp


def streams_digest(streams: list[torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for s in streams:
        h.update(str(len(s)).encode())
        h.update(s.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def base_eval_key(model_fp: str, val: list[torch.Tensor], test: list[torch.Tensor], cfg, precision: str, device) -> str:
    parts = {
        "version": VERSION,
        "model": model_fp,
        "val": streams_digest(val),
        "test": streams_digest(test),
        "seq_len": cfg.train.seq_len,
        "precision": precision,
        "device": torch.device(device).type,
        "eval_batch_size": cfg.eval.batch_size,
        "during_tokens": cfg.eval.during_tokens,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _dir():
    return cache_dir("base_eval")


def load(key: str) -> list[dict] | None:
    path = _dir() / f"{key}.json"
    if not path.is_file():
        return None
    try:
        recs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged entry is recomputed (and overwritten)
    if not isinstance(recs, list) or not all(isinstance(r, dict) and r.get("model") == "base" for r in recs):
        return None
    return [replayed(r) for r in recs]


def replayed(rec: dict) -> dict:
    """A base-eval record reused by another run: this run spent no time or FLOPs on it (phase accounting); the
    original cost is kept beside."""
    if rec.get("cached"):
        return dict(rec)
    return {**rec, "cached": True, "seconds": 0.0, "positions": 0, "measured_seconds": rec.get("seconds")}


def save(key: str, records: list[dict]) -> None:
    atomic_write_json(_dir() / f"{key}.json", [r for r in records if r.get("model") == "base"])


def start_key(model_fp: str, cfg, reference, val: list[torch.Tensor], precision: str, device) -> str:
    """Key of ``cfg.strategy``'s starting point (see the module docstring); ``reference``: the X_S token stream or
    None."""
    parts = {
        "version": VERSION,
        "kind": "start",
        "strategy": cfg.strategy,
        "model": model_fp,
        "reference": None if reference is None else streams_digest([reference]),
        "val": streams_digest(val),
        "trust": to_dict(cfg)["trust"],
        "seq_len": cfg.train.seq_len,
        "eval_batch_size": cfg.eval.batch_size,
        "precision": precision,
        "device": torch.device(device).type,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def load_start(key: str) -> dict[str, torch.Tensor] | None:
    """The cached starting point (name -> tensor), or None (missing or damaged: recomputed and overwritten)."""
    path = _dir() / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        got = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (any unreadable file is a cache miss)
        return None
    if not isinstance(got, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in got.items()):
        return None
    return got


def save_start(key: str, start: dict[str, torch.Tensor]) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in start.items()}, buf)
    atomic_write_bytes(_dir() / f"{key}.pt", buf.getvalue())
