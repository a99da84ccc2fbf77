"""Run experiments: build model + data + protocol from a Config, write the run directory, resume.

    from trustlora.config import load_config
    from trustlora.api import run
    run_dir = run(load_config(None, ["strategy=fedavg", "train.steps=10"]))

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``report.md``, PNG figures and
``adapters/user_<i>/`` (PEFT format). While training, a checkpoint is committed after every round
(``checkpoint.py``, also across torch.distributed processes); running the same config with the same ``out``
again resumes from it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trustlora import base_eval
from trustlora import checkpoint as ckpt
from trustlora.alloc import loaded_allocator
from trustlora.attacks import shuffle_tokens
from trustlora.base_eval import model_fingerprint
from trustlora.cache import atomic_write_json, atomic_write_text
from trustlora.comm import InProcess
from trustlora.config import Config, ConfigError, dump_yaml, from_dict, load_config, read_yaml, to_dict
from trustlora.data.partition import Partition, build_partition
from trustlora.data.sources import load_documents
from trustlora.flops import forward_flops_per_token, machine_peak_gflops, phase_costs, train_flops_per_token
from trustlora.metrics import dominant_categories
from trustlora.model import build_stack
from trustlora.model.base import load_base, load_tokenizer
from trustlora.model.multilora import MultiLoRA
from trustlora.protocol import LocalData, Rounds
from trustlora.rundir import SUMMARY_VERSION
from trustlora.train import LocalTrainer, resolve_precision
from trustlora.trust.oracle import oracle_matrix
from trustlora.trust.quality import merge_quality, trust_quality


@dataclass
class Workspace:
    """What identical runs (a comparison) share: model, tokenizer, partition, stacked adapters, base eval."""

    key: tuple = ()
    model: object = None
    tokenizer: object = None
    partition: Partition | None = None
    mm: MultiLoRA | None = None
    base_eval: list[dict] = field(default_factory=list)
    model_fp: str = ""


def _data_key(cfg: Config) -> tuple:
    """Identity of what a :class:`Workspace` holds: two configs of one key may share model, tokenizer, partition,
    stacked adapters and the base model's eval records. Whole sections are compared (as JSON), never a hand-picked
    list of their fields, so a new data/adapter/eval option can never reuse a stale partition, model or base eval.

    - ``model``, ``device``: which weights (and tokenizer) are loaded, and where;
    - the whole ``data`` section: the documents, their split between users and X_S, the number of users;
    - the whole ``lora`` section: the shape and init of the stacked adapters (rank, alpha, targets, dropout, ...);
    - ``train.seq_len``, ``train.precision``: the base eval's windows and numbers; bf16 also drops the
      full-precision frozen weights (``keep_lowp_weights``). The other ``train`` fields (steps, lr, ...) only
      matter once training starts, after the Workspace is built;
    - the whole ``eval`` section: the base eval replayed from the first run (batch size, ``during_tokens`` subsample)
      and whether the model was fingerprinted for the disk cache (``cache_base``), as in ``base_eval.base_eval_key``.
    """
    sections = to_dict(cfg)
    return (
        cfg.model,
        cfg.device,
        json.dumps(sections["data"], sort_keys=True),
        json.dumps(sections["lora"], sort_keys=True),
        cfg.train.seq_len,
        cfg.train.precision,
        json.dumps(sections["eval"], sort_keys=True),
    )


def prepare(cfg: Config, ws: Workspace | None = None, log=print, users: list[int] | None = None) -> Workspace:
    """Load (or reuse) model, tokenizer, partition and the stacked adapters (one slot per hosted user)."""
    users = users if users is not None else list(range(cfg.data.users))
    key = (*_data_key(cfg), tuple(users))
    if ws is not None and ws.key == key:
        return ws
    ws = Workspace(key=key)
    t0 = time.time()
    ws.tokenizer = load_tokenizer(cfg.model)
    ws.partition = prepare_data(cfg, ws.tokenizer)  # data problems surface before the model loads
    log(
        f"data {cfg.data.source}: {len(ws.partition.categories)} categories {ws.partition.categories}, "
        f"{cfg.data.users} users ({time.time() - t0:.1f}s)"
    )
    t0 = time.time()
    ws.model, _ = load_base(cfg.model, device=cfg.device, tokenizer=ws.tokenizer)
    if cfg.eval.cache_base and len(users) == cfg.data.users:  # simulation: the base-eval cache key (~0.7 s to hash)
        ws.model_fp = model_fingerprint(ws.model)  # before adapters are attached
    log(
        f"model {cfg.model}: {sum(p.numel() for p in ws.model.parameters()) / 1e6:.1f}M params "
        f"({time.time() - t0:.1f}s)"
    )
    ws.mm = build_stack(ws.model, len(users), cfg.lora, seed=cfg.seed, user_ids=users, n_total=cfg.data.users)
    if isinstance(ws.mm, MultiLoRA) and resolve_precision(cfg.train.precision, ws.mm.device) == "bf16":
        ws.mm.keep_lowp_weights(drop_full=True)  # frozen weights held in bf16 only: identical numbers, 424 MB less
    return ws


def prepare_data(cfg: Config, tokenizer=None) -> Partition:
    """Documents of ``cfg.data`` split between users and X_S, tokenised with the model's tokenizer."""
    if tokenizer is None:
        from trustlora.model.base import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    tokenizer.model_max_length = int(1e12)  # documents are long; windows are cut later
    docs = load_documents(cfg.data)
    return build_partition(
        docs, lambda s: tokenizer.encode(s, add_special_tokens=False), tokenizer.eos_token_id, cfg.data
    )


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy}"


class MetricsLog:
    """Append-only metrics.jsonl; each line is flushed whole. On resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, keep_until_round: int | None = None, sinks: list | None = None):
        self.path = path
        self.sinks = list(sinks or [])  # more consumers of every new record (e.g. trustlora.tbsink.TensorBoardSink)
        self.records: list[dict] = []
        if keep_until_round is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("round", 0) <= keep_until_round:
                    self.records.append(rec)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def __call__(self, rec: dict) -> None:
        self.records.append(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        for sink in self.sinks:
            sink(rec)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _save_checkpoint(out: Path, round_: int, proto: Rounds, train_time: float, comm, main: bool) -> None:
    """Save this process's state, then (after every process did) commit the round."""
    state = {
        "round": round_,
        "adapters": proto.mm.get_flat(),
        "trainer": proto.trainer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "train_time": train_time,
        "rounds": proto.state_dict(),  # last round's updates (duplicate check, attack 'copy')
    }
    first = proto.users[0]
    ckpt.save(out, first, round_, state)
    comm.barrier()  # every process saved round_
    if main:
        ckpt.commit(out, round_)
    comm.barrier()  # round_ is committed everywhere
    ckpt.prune(out, first, round_)


def _agree_on_resume_round(cfg: Config, out: Path, comm, main: bool) -> int:
    """The main process decides (or refuses) the resume round; every process gets the same answer."""
    verdict: int | str | None = None
    if main:
        try:
            verdict = ckpt.resume_round(cfg, out)
        except ConfigError as e:
            verdict = str(e)
    verdict = comm.gather_objects(verdict)[0]
    if isinstance(verdict, str):
        raise ConfigError(verdict)
    return int(verdict)


def _round_train_seconds(records: list[dict], r: int) -> float:
    return sum(x.get("seconds", 0.0) for x in records if x["kind"] == "train" and x["round"] == r)


def merge_records(parts: list[dict]) -> dict:
    """One record from every rank's record of the same event: per-user lists are concatenated in rank order."""
    out = dict(parts[0])
    for key in ("users", "loss", "ppl", "W", "scores"):
        if key in out and out[key] is not None:
            out[key] = [x for p in parts for x in p[key]]
    if "seconds" in out:
        out["seconds"] = max(p["seconds"] for p in parts)
    if out.get("quality") is not None:
        out["quality"] = merge_quality([p.get("quality") for p in parts])
    return out


def run(cfg: Config, ws: Workspace | None = None, progress: bool = True, log=print) -> Path:
    """Run one experiment end to end; returns the run directory.

    ``runtime=simulation`` hosts every user in this process; ``runtime=distributed`` starts
    ``world_size`` processes (or joins the torchrun/env:// process group this process belongs to).
    """
    if cfg.runtime == "distributed":
        from trustlora.runtime import launch

        return launch(cfg, progress=progress, log=log)
    return run_users(cfg, InProcess(cfg.data.users), ws=ws, progress=progress, log=log)


def run_users(cfg: Config, comm, ws: Workspace | None = None, progress: bool = True, log=print) -> Path:
    """Algorithm 1 for the users ``comm.local_users`` hosted here (all of them in simulation).

    Only the main process (the one hosting user 0) writes run files; the others export their adapters.
    """
    from tqdm.auto import tqdm

    from trustlora import report

    users = comm.local_users
    main = users[0] == 0
    all_here = len(users) == cfg.data.users  # every user in this process: the base-eval cache key covers them all
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    cfg.out = str(out)
    start_round = _agree_on_resume_round(cfg, out, comm, main)
    ws = prepare(cfg, ws, log=log if main else (lambda *a: None), users=users)
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    part, mm = ws.partition, ws.mm
    n = cfg.data.users
    torch.manual_seed(cfg.seed + users[0])
    mm.reset_adapters(cfg.seed)
    mine = [part.users[u] for u in users]
    train = [u.train for u in mine]
    if cfg.attack.kind == "garbage_data":  # data poisoning: attackers train on their own tokens shuffled
        bad = set(cfg.attack.users)
        train = [shuffle_tokens(t, cfg.seed, u) if u in bad else t for t, u in zip(train, users, strict=True)]
    data = LocalData(train, [u.val for u in mine], [u.test for u in mine], part.reference)
    trainer = LocalTrainer(mm, data.train, cfg.train, seed=cfg.seed, user_ids=users)
    sinks = []
    if main and cfg.log.tensorboard:
        from trustlora.tbsink import TensorBoardSink

        sinks.append(TensorBoardSink(out / "tensorboard"))
    metrics = MetricsLog(
        out / "metrics.jsonl" if main else out / f".metrics.rank{users[0]}.jsonl",
        keep_until_round=start_round if start_round else None,
        sinks=sinks,
    )
    record = lambda rec: metrics(merge_records(comm.gather_objects(rec)))  # noqa: E731  (one process: identity)
    bar = tqdm(total=cfg.train.steps, desc=f"{cfg.strategy}", unit="step", disable=not (progress and main), leave=True)
    proto = Rounds(
        mm,
        trainer,
        data,
        cfg,
        comm,
        part.mixture,
        record=record,
        progress=lambda msg: bar.set_postfix_str(msg, refresh=True),
    )
    if all_here and cfg.eval.cache_base and ws.model_fp and proto.needs_reference:
        prec = resolve_precision(cfg.train.precision, mm.device)
        proto.start_key = base_eval.start_key(ws.model_fp, cfg, data.reference, data.val, prec, mm.device)
    wall0 = time.time()
    train_time = 0.0
    if start_round:
        state = ckpt.load(out, users[0], start_round)
        mm.set_flat(state["adapters"])
        trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        proto.load_state_dict(state.get("rounds", {}))
        train_time = state["train_time"]
        bar.update(sum(proto.schedule[:start_round]))
        log(f"resuming {out} after round {start_round}")
    elif ws.base_eval and all_here:
        for rec in ws.base_eval:
            metrics(base_eval.replayed(rec))  # computed by an earlier run of this comparison
    else:
        key = None
        if all_here and cfg.eval.cache_base and ws.model_fp:
            prec = resolve_precision(cfg.train.precision, mm.device)
            key = base_eval.base_eval_key(ws.model_fp, data.val, data.test, cfg, prec, mm.device)
        cached = base_eval.load(key) if key else None
        if cached:
            for rec in cached:
                metrics(rec)  # from the disk cache (replayed: no compute in this run)
        else:
            proto.evaluate_base()
            if key:
                base_eval.save(key, metrics.records)
        ws.base_eval = [r for r in metrics.records if r.get("model") == "base"]
    fail_at = int(os.environ.get("TRUSTLORA_FAIL_AT_ROUND", "0"))  # fault injection for crash-recovery tests
    kill = os.environ.get("TRUSTLORA_KILL_AT_ROUND", "")  # "user:round": the process hosting user dies (SIGKILL)
    kill_user, _, kill_round = kill.partition(":")
    for r in range(start_round + 1, len(proto.schedule) + 1):
        if r == fail_at and main:
            raise RuntimeError(f"TRUSTLORA_FAIL_AT_ROUND={fail_at}: simulated crash before round {r}")
        if kill and r == int(kill_round) and int(kill_user) in users:
            os.kill(os.getpid(), signal.SIGKILL)
        proto.run_round(r, step_callback=lambda: (bar.set_postfix_str("train", refresh=False), bar.update(1)))
        train_time += _round_train_seconds(metrics.records, r)
        _save_checkpoint(out, r, proto, train_time, comm, main)
    bar.close()
    metrics.close()
    mm.eval()
    wall = time.time() - wall0

    for slot, u in enumerate(users):
        mm.export(slot, out / "adapters" / f"user_{u}", base_name=cfg.model)
    comm.barrier()  # every process has finished its last round before checkpoints go
    if not main:
        (out / f".metrics.rank{users[0]}.jsonl").unlink(missing_ok=True)
        ckpt.clear(out, users[0], main)
        return out
    evals = [r for r in metrics.records if r["kind"] == "eval" and r["split"] == "test"]
    vals = [r for r in metrics.records if r["kind"] == "eval" and r["split"] == "val"]
    trusts = [r for r in metrics.records if r["kind"] == "trust"]
    base_test, final_test = evals[0]["ppl"], evals[-1]["ppl"]
    tokens = cfg.train.steps * n * cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len
    summary = {
        "version": SUMMARY_VERSION,
        "strategy": cfg.strategy,
        "model": cfg.model,
        "seed": cfg.seed,
        "runtime": cfg.runtime,
        "precision": resolve_precision(cfg.train.precision, mm.device),
        "allocator": loaded_allocator(),  # tcmalloc when the CLI found it (trustlora.alloc), else glibc
        "users": n,
        "categories": part.categories,
        "user_categories": dominant_categories(part.mixture, part.categories),
        "mixture": part.mixture.tolist(),
        "oracle_W": oracle_matrix(part.mixture).tolist(),
        "final_W": trusts[-1]["W"] if trusts else np.eye(n).tolist(),
        "base_test_ppl": base_test,
        "final_test_ppl": final_test,
        "base_mean_test_ppl": float(np.mean(base_test)),
        "final_mean_test_ppl": float(np.mean(final_test)),
        "base_val_ppl": vals[0]["ppl"],
        "final_val_ppl": vals[-1]["ppl"],
        "wall_time_s": wall,
        "train_time_s": train_time,
        "train_tokens": tokens,
        "train_tokens_per_s": tokens / train_time if train_time > 0 else None,
        "adapter_params_per_user": mm.num_adapter_params(),
        "bytes_per_round": trusts[-1]["bytes"] if trusts else {},
        # trust quality of the final W (trustlora.trust.quality): means + per-user lists (order of final_W's rows)
        "trust_quality": trust_quality(
            np.asarray(trusts[-1]["W"]) if trusts else np.eye(n),
            trusts[-1].get("users", range(n)) if trusts else range(n),
            part.mixture,
        ),
        "data": part.info,
    }
    if cfg.attack.kind != "none" and cfg.attack.users:
        summary["attack"] = attack_summary(cfg.attack, final_test, trusts, n)
    precision = summary["precision"]
    fwd = forward_flops_per_token(mm.model, cfg.train.seq_len)
    summary["phases"] = phase_costs(
        metrics.records,
        fwd,
        train_flops_per_token(mm.model, cfg.train.seq_len, mm.num_adapter_params()),
        wall,
        machine_peak_gflops(precision, str(mm.device)),
    )
    atomic_write_json(out / "summary.json", summary)
    report.write_run_report(out)
    ckpt.clear(out, users[0], main)
    return out


def attack_summary(atk, final_test: list[float], trusts: list[dict], n: int) -> dict:
    """Honest users' mean final test ppl and the trust mass they put on attackers (final W; mean over rounds)."""
    bad = sorted(set(atk.users))
    honest = [i for i in range(n) if i not in bad]

    def mass(w) -> float:
        w = np.asarray(w, dtype=float)
        return float(np.mean([w[i, bad].sum() for i in honest]))

    per_round = [mass(t["W"]) for t in trusts]
    return {
        "users": bad,
        "kind": atk.kind,
        "honest_users": honest,
        "honest_mean_test_ppl": float(np.mean([final_test[i] for i in honest])),
        "trust_mass_on_attackers": per_round[-1] if per_round else 0.0,
        "trust_mass_on_attackers_per_round": per_round,
        "rejected_messages": int(sum(len(t.get("rejected") or []) for t in trusts)),
    }


def run_or_reuse(
    config: str | None, overrides: list[str], run_dir: Path, ws: Workspace | None, progress: bool = True, log=print
) -> Workspace | None:
    """One point of a compare / sweep / scale loop: run ``config`` + ``overrides`` into ``run_dir`` unless a run
    already finished there (its summary.json exists). Returns the Workspace to share with the next point."""
    if (run_dir / "summary.json").exists():
        log(f"{run_dir}: already finished, reusing its results")
        return ws
    cfg = load_config(config, list(overrides) + [f"out={run_dir}"])
    ws = prepare(cfg, ws)
    run(cfg, ws=ws, progress=progress)
    return ws


def load_run_config(run_dir: str | Path) -> Config:
    return from_dict(read_yaml(Path(run_dir) / "config.yaml"))
