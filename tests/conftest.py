"""Shared fixtures: a small own-data corpus (jsonl, 3 categories) and tiny-model config overrides."""

import json
import random

import pytest

WORDS = {
    "alpha": "the cat sat on a mat and looked at the dog while it rained outside".split(),
    "beta": "quantum fields vibrate under strong magnetic forces near cold atoms".split(),
    "gamma": "zwei drei vier fuenf sechs sieben acht neun zehn elf zwoelf".split(),
}


@pytest.fixture(autouse=True)
def _private_base_eval_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own base-eval cache (the model/data caches stay shared)."""
    from trustlora import base_eval

    d = tmp_path_factory.mktemp("base_eval")
    monkeypatch.setattr(base_eval, "_dir", lambda: d)
    return d


@pytest.fixture
def corpus(tmp_path):
    """A jsonl file with 3 categories x 40 documents of ~60 words each."""
    rng = random.Random(0)
    path = tmp_path / "corpus.jsonl"
    with open(path, "w") as f:
        for cat, words in WORDS.items():
            for _ in range(40):
                f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60)), "category": cat}) + "\n")
    return path


@pytest.fixture
def tiny_overrides(corpus, tmp_path):
    return [
        "model=tiny-random",
        "data.source=jsonl",
        f"data.path={corpus}",
        "data.users=3",
        "data.train_tokens=1200",
        "data.val_tokens=200",
        "data.test_tokens=300",
        "data.reference_tokens=96",
        "train.steps=6",
        "train.warmup=2",
        "train.period=2",
        "train.batch_size=2",
        "train.seq_len=32",
        "train.precision=fp32",
        "train.lr=0.01",
        "eval.during_tokens=64",
        "lora.dropout=0.0",
    ]
