"""Any Hugging Face causal LM: tiny random models of several families, loaded the way a run loads ``model=PATH``
(``load_base``: frozen, CPU attention patches where the family has them), get adapters on every attention and MLP
linear, and the stacked model's per-user losses and adapter gradients equal PEFT's on HF's own model.

    pytest -q tests/test_families.py
"""

import copy

import pytest
import torch

from trustlora.config import LoraConfig
from trustlora.model.base import load_base, tiny_tokenizer
from trustlora.model.multilora import MultiLoRA, find_targets
from trustlora.train import per_user_loss

N, B, T, V = 2, 2, 12, 257  # V: the tiny tokenizer's 256 bytes + <eos>
IDS = dict(bos_token_id=V - 1, eos_token_id=V - 1, pad_token_id=V - 1)


def _config(family: str, vocab: int = V + 7):
    import transformers as tf

    small = dict(vocab_size=vocab, **IDS)  # an embedding padded beyond the tokenizer, as real models often have
    return {
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **small),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **small
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, **small
        ),
        "qwen2": lambda: tf.Qwen2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            **small,
        ),
        "phi3": lambda: tf.Phi3Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            **small,
        ),
        "gemma": lambda: tf.GemmaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=64,
            **small,
        ),
        "falcon": lambda: tf.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **small),
        "bloom": lambda: tf.BloomConfig(hidden_size=32, n_layer=2, n_head=2, **small),
        "phi": lambda: tf.PhiConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **small
        ),
    }[family]()


FAMILIES = ["gpt2", "gpt_neox", "opt", "qwen2", "phi3", "gemma", "falcon", "bloom", "phi"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_adapters_match_peft(family, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(family)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, tok = load_base(str(tmp_path))
    assert len(tok) <= model.get_input_embeddings().num_embeddings  # some families' tokenizers add their own eos
    mm = MultiLoRA(model, N, LoraConfig(dropout=0.0), seed=0)
    n_blocks = len({tuple(p for p in name.split(".") if p.isdigit()) for name in mm.target_names})
    assert n_blocks == 2 and len(mm.target_names) >= 2 * 4, (family, mm.target_names)  # attention and MLP linears
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mm.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ids = torch.randint(0, V - 1, (N * B, T), generator=torch.Generator().manual_seed(2))
    mm.train()
    nll, count = per_user_loss(mm(ids), ids, N)
    loss = nll / count
    loss.sum().backward()

    reference = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # HF's own attention and norms
    for u in range(N):
        pm = mm.peft_model(u, copy.deepcopy(reference), trainable=True)
        out = pm(input_ids=ids[u * B : (u + 1) * B], labels=ids[u * B : (u + 1) * B])
        torch.testing.assert_close(loss[u], out.loss, rtol=1e-5, atol=1e-5)
        out.loss.backward()
        for name, layer in mm.layers.items():
            peft_layer = pm.base_model.model.get_submodule(name)
            torch.testing.assert_close(
                layer.lora_A.grad[u].T, peft_layer.lora_A["default"].weight.grad, rtol=1e-3, atol=1e-5
            )
            torch.testing.assert_close(
                layer.lora_B.grad[u].T, peft_layer.lora_B["default"].weight.grad, rtol=1e-3, atol=1e-5
            )


def test_tokenizer_larger_than_the_embedding_is_a_clear_error(tmp_path):
    from transformers import AutoModelForCausalLM

    from trustlora.model.base import ModelLoadError

    AutoModelForCausalLM.from_config(_config("gpt_neox", vocab=200)).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="257 tokens but the model's input embedding has 200 rows"):
        load_base(str(tmp_path))


def test_targets_cover_mlps_outside_a_module_named_mlp():
    """OPT keeps its MLP as fc1/fc2 on the decoder layer, not in a module named mlp: 'all' and 'mlp' still reach them
    (every non-attention linear of a numbered block), never the LM head or the embedding projections."""
    from transformers import AutoModelForCausalLM

    opt = AutoModelForCausalLM.from_config(_config("opt"))
    mlp = find_targets(opt, ["mlp"])
    assert sorted(n.rsplit(".", 1)[-1] for n in mlp) == ["fc1", "fc1", "fc2", "fc2"]
    attn = find_targets(opt, ["attention"])
    assert sorted({n.rsplit(".", 1)[-1] for n in attn}) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    assert sorted(find_targets(opt, ["all"])) == sorted(mlp + attn)
    assert not any("lm_head" in n or "embed" in n or "project" in n for n in mlp + attn)
