"""Command line: the only place that parses argv.

    trustlora run [--config FILE] [--dry-run] [key=value ...]     one experiment (default: the embedded demo)
    trustlora compare [--config FILE] [strategies=a,b] [seeds=0,1] [key=value ...]
    trustlora data stats [--config FILE] [key=value ...]          per-user token counts + Jaccard table
    trustlora report RUN_DIR                                       re-render report.md and figures

User errors (bad config, unknown strategy/key/model/path, malformed YAML) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from trustlora.config import ConfigError, dump_yaml, load_config, parse_override


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
    from trustlora.trust import names

    base_cfg = load_config(args.config, args.overrides)
    strategies = base_cfg.strategies or names()
    seeds = base_cfg.seeds or [base_cfg.seed]
    out = Path(base_cfg.out or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = [o for o in args.overrides if parse_override(o)[0] != "out"]
    if args.dry_run:
        print(dump_yaml(base_cfg), end="")
        print(f"# strategies: {strategies}\n# seeds: {seeds}\n# out: {out}")
        return 0
    _quiet_libraries()
    from trustlora import report
    from trustlora.api import Workspace, prepare, run

    ws: Workspace | None = None
    rows = []
    t0 = time.time()
    for seed in seeds:
        for strat in strategies:
            run_dir = out / f"{strat}-seed{seed}"
            if not (run_dir / "summary.json").exists():
                cfg = load_config(args.config, overrides + [f"strategy={strat}", f"seed={seed}", f"out={run_dir}"])
                ws = prepare(cfg, ws)
                run(cfg, ws=ws, progress=not args.no_progress)
            else:
                print(f"{run_dir}: already finished, reusing its results")
            rows.append(report.comparison_row_from_run(run_dir, seed=seed))
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
    import numpy as np

    from trustlora.api import prepare_data
    from trustlora.data.stats import jaccard_table
    from trustlora.report import format_table

    part = prepare_data(cfg)
    splits = [u.train for u in part.users]
    cats = [part.categories[int(np.argmax(r))] for r in part.mixture]
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


def cmd_report(args) -> int:
    from trustlora import report

    path = report.write_run_report(Path(args.run_dir))
    print(path.read_text())
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
    dp = sub.add_parser("data", help="data tools")
    dsub = dp.add_subparsers(dest="data_command", required=True)
    st = dsub.add_parser("stats", help="per-user token counts and Jaccard overlap")
    st.add_argument("--config")
    st.add_argument("overrides", nargs="*", metavar="key=value")
    rp = sub.add_parser("report", help="re-render report.md and figures of a run directory")
    rp.add_argument("run_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "compare": cmd_compare, "data": cmd_data, "sweep": cmd_sweep, "report": cmd_report}
    try:
        return handlers[args.command](args)
    except ConfigError as e:
        print(f"trustlora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trustlora: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
