"""Config loading, overrides and CLI user errors (one line, exit code 2, no traceback); every preset loads."""

from pathlib import Path

import pytest

from trustlora.cli import main
from trustlora.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_defaults_are_the_embedded_demo():
    cfg = load_config()
    assert (cfg.model, cfg.strategy, cfg.data.source, cfg.data.users, cfg.data.mixture) == (
        "smollm2",
        "predictions",
        "parlspeech",
        6,
        "high",
    )


def test_dotted_overrides_of_every_documented_key(tmp_path):
    cfg = load_config(
        None,
        [
            f"out={tmp_path}",
            "model=gpt2",
            "strategy=validation",
            "seed=3",
            "data.source=csv",
            f"data.path={tmp_path}",
            "data.text_column=body",
            "data.category_column=label",
            "data.users=4",
            "data.mixture=low",
            "data.seed=7",
            "train.steps=50",
            "train.warmup=10",
            "train.period=5",
            "train.batch_size=3",
            "train.seq_len=64",
            "trust.temperature=0.5",
            "lora.targets=attention,mlp",
        ],
    )
    assert cfg.out == str(tmp_path) and cfg.model == "gpt2" and cfg.strategy == "validation" and cfg.seed == 3
    d, t = cfg.data, cfg.train
    assert (d.source, d.text_column, d.category_column, d.users, d.mixture, d.seed) == (
        "csv",
        "body",
        "label",
        4,
        "low",
        7,
    )
    assert (t.steps, t.warmup, t.period, t.batch_size, t.seq_len) == (50, 10, 5, 3, 64)
    assert cfg.trust.temperature == 0.5 and cfg.lora.targets == ["attention", "mlp"]


def test_yaml_nesting_and_explicit_mixture(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("strategy: oracle\ndata:\n  users: 2\n  mixture: [[1, 0], [0.5, 0.5]]\ntrain: {steps: 8}\n")
    cfg = load_config(p, ["train.warmup=2"])
    assert cfg.data.mixture == [[1, 0], [0.5, 0.5]] and cfg.train.steps == 8 and cfg.train.warmup == 2


def test_comma_lists_from_the_command_line():
    cfg = load_config(None, ["seeds=0,1", "strategies=local,predictions", "lora.targets=attention,mlp"])
    assert cfg.seeds == [0, 1] and cfg.strategies == ["local", "predictions"]
    assert cfg.lora.targets == ["attention", "mlp"]
    with pytest.raises(ConfigError, match="seeds: expected an integer"):
        load_config(None, ["seeds=0,x"])


def test_exponent_floats_without_dot(tmp_path):
    # PyYAML (YAML 1.1) reads 5e-5 as a string; a float field must still accept it, from YAML and from the CLI
    p = tmp_path / "c.yaml"
    p.write_text("train: {lr: 5e-5}\n")
    assert load_config(p).train.lr == 5e-5
    assert load_config(None, ["train.lr=2e-3", "trust.temperature=1e0"]).train.lr == 2e-3
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'fast'"):
        load_config(None, ["train.lr=fast"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["strategy=foo"], "strategy: expected one of local, fedavg"),
        (["train.stpes=3"], "unknown config key 'train.stpes'"),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["train.steps=abc"], "train.steps: expected an integer"),
        (["train.warmup=50"], "train.warmup"),
        (["data.mixture=medium"], "data.mixture"),
        (["data.users=2", "data.mixture=[[1, 0], [0, -1]]"], "data.mixture: expected non-negative"),
        (["data.users=3", "data.mixture=[[1, 0], [0, 1]]"], "data.mixture: expected 3 rows"),
        (["data.source=folder"], "data.path"),
        (["train.precision=fp16"], "train.precision"),
        (["train"], "expected key=value"),
    ],
)
def test_bad_values_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_cli_user_errors_are_one_line(capsys, tmp_path):
    assert "strategies: expected names from" in _cli_error(capsys, ["compare", "strategies=local,nope", "--dry-run"])
    assert "strategy: expected one of" in _cli_error(capsys, ["run", "strategy=nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n")
    assert "malformed YAML" in _cli_error(capsys, ["run", "--config", str(bad)])
    assert "not found" in _cli_error(capsys, ["run", "--config", str(tmp_path / "missing.yaml")])
    err = _cli_error(
        capsys, ["run", f"out={tmp_path / 'o'}", "model=./no/such/model", "data.source=folder", f"data.path={tmp_path}"]
    )
    assert "model" in err
    err = _cli_error(
        capsys,
        [
            "run",
            "model=tiny-random",
            "data.source=jsonl",
            f"data.path={tmp_path / 'x.jsonl'}",
            f"out={tmp_path / 'o2'}",
        ],
    )
    assert "data.path" in err


def test_cli_dry_run_prints_resolved_config(capsys):
    assert main(["run", "--dry-run", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "strategy: predictions" in out


@pytest.mark.parametrize("preset", PRESETS, ids=[str(p.relative_to(ROOT)) for p in PRESETS])
def test_every_shipped_preset_validates(preset, capsys):
    assert main(["run", "--config", str(preset), "--dry-run"]) == 0
    assert "strategy:" in capsys.readouterr().out


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == Config()


def test_cuda_device_follows_local_rank(monkeypatch):
    import torch

    from trustlora.model.base import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_precision_auto_resolves_by_hardware(monkeypatch):
    from trustlora import train

    assert train.resolve_precision("fp32") == "fp32"
    assert train.resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(train.cpu, "has_bf16", lambda: False)
    assert train.resolve_precision("auto", "cpu") == "fp32"
    assert isinstance(train.autocast("auto", "cpu"), __import__("contextlib").nullcontext)
    monkeypatch.setattr(train.cpu, "has_bf16", lambda: True)
    assert train.resolve_precision("auto", "cpu") == "bf16"
    assert not isinstance(train.autocast("auto", "cpu"), __import__("contextlib").nullcontext)


def test_cpu_bf16_flag_detection_matches_cpuinfo():
    from trustlora import cpu

    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:
        flags = []
    assert cpu.has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert cpu.has_amx() == ("amx_bf16" in flags) and cpu.flags() == frozenset(flags[2:])  # after "flags", ":"


def test_report_of_a_missing_run_is_one_line(capsys, tmp_path):
    assert "holds no run" in _cli_error(capsys, ["report", str(tmp_path / "nothing")])
