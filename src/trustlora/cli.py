"""Command line: the only place that parses argv.

    trustlora run [--config FILE] [--dry-run] [key=value ...]     one experiment (default: the embedded demo)
    trustlora compare [--config FILE] [strategies=a,b] [seeds=0,1] [key=value ...]
    trustlora data stats [--config FILE] [key=value ...]          per-user token counts + Jaccard table
    trustlora scale --users 6,12,24 [--config FILE] [strategies=a,b] [key=value ...]   ppl + trust quality per N
    trustlora robustness --attacks nan,scale attack.users=0,4 [--config FILE] [strategies=a,b]   attack table
    trustlora report RUN_DIR                                       re-render report.md and figures
    trustlora analyze {table4,trust,bytes,topology,placement} DIR... paper tables/figures from finished runs

User errors (bad config, unknown strategy/key/model/path, malformed YAML) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from trustlora.config import ConfigError, RunError, UserError, dump_yaml, load_config


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def cmd_run(args) -> int:
    _quiet_libraries()
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    from trustlora.api import run

    t0 = time.time()
    out = run(cfg, progress=not args.no_progress)
    print((out / "report.md").read_text())
    print(f"run directory: {out}  ({time.time() - t0:.0f}s)")
    return 0


def cmd_compare(args) -> int:
    from trustlora.experiment import drop_overrides, run_grid, seeds_of, study_dir
    from trustlora.trust import default_compare

    base_cfg = load_config(args.config, args.overrides)
    strategies = base_cfg.strategies or default_compare()
    seeds = seeds_of(base_cfg)
    out = study_dir(base_cfg, "compare")
    if args.dry_run:
        print(dump_yaml(base_cfg), end="")
        print(f"# strategies: {strategies}\n# seeds: {seeds}\n# out: {out}")
        return 0
    _quiet_libraries()
    from trustlora import report

    t0 = time.time()
    points = [(strat, [f"strategy={strat}"]) for strat in strategies]
    overrides = drop_overrides(args.overrides, "out")
    runs = run_grid(args.config, overrides, points, seeds, out, progress=not args.no_progress)
    rows = [report.comparison_row_from_run(r.run_dir, seed=r.seed) for r in runs]
    paths = report.write_comparison(
        rows,
        out,
        title=f"trustlora comparison ({base_cfg.data.source}, "
        f"{base_cfg.data.users} users, mixture {base_cfg.data.mixture})",
    )
    print(Path(paths["md"]).read_text())
    print(f"comparison written to {out}  ({time.time() - t0:.0f}s)")
    return 0


def cmd_data(args) -> int:
    cfg = load_config(args.config, args.overrides)
    _quiet_libraries()

    from trustlora.api import prepare_data
    from trustlora.data.stats import jaccard_table
    from trustlora.metrics import dominant_categories
    from trustlora.tables import format_table

    part = prepare_data(cfg)
    splits = [u.train for u in part.users]
    cats = dominant_categories(part.mixture, part.categories)
    rows = [[f"u{i}", cats[i], len(u.train), len(u.val), len(u.test)] for i, u in enumerate(part.users)]
    print(format_table(["user", "category", "train", "val", "test"], rows))
    print(
        f"\nreference set X_S: {len(part.reference)} tokens\n\nJaccard index of train token multisets "
        "J = |Di ∩ Dj| / (|Di| + |Dj|):\n"
    )
    j = jaccard_table(splits)
    print(
        format_table(
            [""] + [f"u{i}" for i in range(len(splits))],
            [[f"u{i} ({cats[i]})"] + [float(x) for x in row] for i, row in enumerate(j)],
            floatfmt=".3f",
        )
    )
    return 0


def cmd_sweep(args) -> int:
    _quiet_libraries()
    from trustlora.sweep import run_sweep

    out = run_sweep(args.config, args.overrides, args.grid, progress=not args.no_progress)
    print((out / "sweep.md").read_text())
    print(f"sweep written to {out}")
    return 0


def cmd_scale(args) -> int:
    _quiet_libraries()
    from trustlora.scaling import parse_users, run_scaling

    out = run_scaling(args.config, args.overrides, parse_users(args.users), progress=not args.no_progress)
    print((out / "scale.md").read_text())
    print(f"scaling table written to {out}")
    return 0


def cmd_robustness(args) -> int:
    from trustlora.robustness import join_tables, parse_attacks, run_robustness

    if args.join:
        out = join_tables(args.join, args.overrides)
        print((out / "robustness.md").read_text())
        print(f"joined robustness table written to {out}")
        return 0
    if not args.attacks:
        raise ConfigError("robustness: expected --attacks K1,K2 (or --join FILE... to join finished tables)")
    attacks = parse_attacks(args.attacks)
    if args.dry_run:
        print(dump_yaml(load_config(args.config, args.overrides)), end="")
        print(f"# attacks: {attacks}")
        return 0
    _quiet_libraries()
    out = run_robustness(args.config, args.overrides, attacks, progress=not args.no_progress)
    print((out / "robustness.md").read_text())
    print(f"robustness table written to {out}")
    return 0


def cmd_report(args) -> int:
    from trustlora import report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "summary.json").is_file():
        raise ConfigError(f"run_dir: '{run_dir}' holds no run (expected metrics.jsonl or summary.json)")
    path = report.write_run_report(run_dir)
    print(path.read_text())
    return 0


def cmd_analyze(args) -> int:
    from trustlora import analyze

    out = Path(args.out) if args.out else None
    if args.analysis == "table4":
        paths = analyze.write_table4([Path(d) for d in args.compare_dirs], out)
    elif args.analysis == "trust":
        paths = analyze.write_trust(Path(args.compare_dir), out)
    elif args.analysis == "bytes":
        paths = analyze.write_bytes(Path(args.run_dir), out)
    elif args.analysis == "topology":
        paths = analyze.write_topology(Path(args.full_run_dir), Path(args.ring_run_dir), out)
    else:
        paths = analyze.write_placement([Path(d) for d in args.run_dirs], out)
    print(Path(paths["md"]).read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trustlora", description="Personalized collaborative LoRA fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--config", help="YAML preset (e.g. configs/default.yaml)")
        sp.add_argument("--dry-run", action="store_true", help="validate and print the resolved config")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=20")

    common(sub.add_parser("run", help="run one experiment (no arguments: the embedded default demo)"))
    common(sub.add_parser("compare", help="run several strategies/seeds on identical data and tabulate"))
    sw = sub.add_parser("sweep", help="run a grid of overrides (e.g. --grid train.lr=1e-3,2e-3) and tabulate")
    common(sw)
    sw.add_argument("--grid", action="append", default=[], metavar="key=v1,v2", help="a swept key (repeatable)")
    sc = sub.add_parser("scale", help="run strategies at several numbers of users; ppl and trust quality per N")
    common(sc)
    sc.add_argument("--users", required=True, metavar="N1,N2", help="numbers of users, e.g. 6,12,24,48")
    rb = sub.add_parser("robustness", help="attack kinds x strategies vs the runs without attackers; table")
    common(rb)
    rb.add_argument("--attacks", metavar="K1,K2", help="attack kinds, e.g. nan,scale,sign_flip")
    rb.add_argument(
        "--join",
        nargs="+",
        metavar="JSON",
        help="no runs: join finished robustness.json tables (later files win per cell) into out=DIR",
    )
    dp = sub.add_parser("data", help="data tools")
    dsub = dp.add_subparsers(dest="data_command", required=True)
    st = dsub.add_parser("stats", help="per-user token counts and Jaccard overlap")
    st.add_argument("--config")
    st.add_argument("overrides", nargs="*", metavar="key=value")
    rp = sub.add_parser("report", help="re-render report.md and figures of a run directory")
    rp.add_argument("run_dir")
    ap = sub.add_parser("analyze", help="paper tables and figures from finished runs (writes md, csv, json, png)")
    asub = ap.add_subparsers(dest="analysis", required=True)
    a = asub.add_parser("table4", help="Table 4: mean test ppl ± std per strategy, one column per comparison")
    a.add_argument("compare_dirs", nargs="+", metavar="COMPARE_DIR", help="output directories of trustlora compare")
    a = asub.add_parser("trust", help="Figs. 3/4, App. A.3: learned W vs oracle W (L1, top-peer accuracy) per round")
    a.add_argument("compare_dir", metavar="COMPARE_DIR")
    a = asub.add_parser("bytes", help="Tables 1/5: bytes per user per round of theta, delta, dense and top-k logits")
    a.add_argument("run_dir", metavar="RUN_DIR")
    a = asub.add_parser("topology", help="Fig. 4: mean test ppl per step of a full and a ring run")
    a.add_argument("full_run_dir", metavar="FULL_RUN_DIR")
    a.add_argument("ring_run_dir", metavar="RING_RUN_DIR")
    a = asub.add_parser("placement", help="Fig. 2: ppl decrease vs trainable params for runs differing in lora.targets")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    for a in asub.choices.values():
        a.add_argument("--out", metavar="DIR", help="output directory (default: beside the inputs)")
    return p


def main(argv: list[str] | None = None) -> int:
    from trustlora.alloc import tune_glibc_malloc

    tune_glibc_malloc()  # glibc: keep big buffers in the heap (no-op under tcmalloc or TRUSTLORA_MALLOC=default)
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "compare": cmd_compare, "data": cmd_data, "sweep": cmd_sweep, "report": cmd_report}
    handlers["scale"] = cmd_scale
    handlers["analyze"] = cmd_analyze
    handlers["robustness"] = cmd_robustness
    try:
        return handlers[args.command](args)
    except UserError as e:  # config, data, model, run directory: one line
        print(f"trustlora: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"trustlora: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trustlora: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``trustlora`` console script: re-executes itself once with tcmalloc preloaded when this machine has it
    (:mod:`trustlora.alloc`; ``TRUSTLORA_MALLOC=glibc`` keeps glibc), then runs :func:`main`."""
    from trustlora.alloc import reexec_with_allocator

    try:
        reexec_with_allocator()
    except ValueError as e:  # a TRUSTLORA_MALLOC that names no file
        print(f"error: {e}", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
