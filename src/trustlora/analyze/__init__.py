"""Paper analyses of finished trustlora runs: tables and figures computed from run directories only.

Every command reads run directories (``metrics.jsonl``, ``summary.json``, ``config.yaml``) or comparison
directories (from ``trustlora compare``: one run directory per ``<strategy>-seed<k>``), prints a markdown
table and writes ``<name>.md``, ``<name>.csv``, ``<name>.json`` and PNG figure(s), each atomically, into
``--out DIR`` or, by default, beside the inputs (see each command)::

    trustlora analyze table4 COMPARE_DIR [COMPARE_DIR ...] [--out DIR]
        Paper Table 4. Rows: strategies (+ the base model); one column per comparison directory,
        labelled "<data.source>-<data.mixture>" from its runs' config.yaml; cells: mean ± sample std
        (ddof=1, "—" with one seed) over seeds of the users' mean test perplexity; best per column in
        bold. Writes table4.{md,csv,json,png} (grouped bar chart) into the common parent of the
        comparison directories.

    trustlora analyze trust COMPARE_DIR [--out DIR]
        Paper Figures 3/4 (and Appendix A.3 when the runs used trust.apply=false). For the first seed
        of every strategy: per trust round, the L1 distance between W and the oracle W averaged over
        rows, the top-peer accuracy (see :func:`trust_closeness`) and the same-category mass. Per
        strategy, mean over seeds, the trust quality of the final W (same-category mass, top-peer
        accuracy, effective peers, off-diagonal L1 to the oracle; :mod:`trustlora.trust.quality`).
        Writes trust.{md,csv,json}, trust_quality.csv, trust_W.png (final W of every strategy beside
        the oracle, diagonal masked) and trust_curves.png (the per-round numbers) into COMPARE_DIR.

    trustlora analyze bytes RUN_DIR [--out DIR]
        Paper Tables 1/5. Bytes one user sends per round for θ, Δθ, dense logits and top-k COO logits
        (the last trust record's ``bytes_equiv``), their ratios to top-k COO, and the bytes the run
        actually sent (``bytes``). Writes bytes.{md,csv,json,png} (log-scale bars) into RUN_DIR.

    trustlora analyze topology FULL_RUN_DIR RING_RUN_DIR [--out DIR]
        Paper Figure 4. Mean test perplexity per evaluated step of both runs, each run's final value and
        the first step at which the other run reaches it, like with like: per-round curves on the test
        subsample of every round (the last included), finals on the full test split of both runs.
        Writes topology.{md,csv,json,png} into the common parent of the two run directories.

    trustlora analyze placement RUN_DIR [RUN_DIR ...] [--out DIR]
        Paper Figure 2. For runs differing in lora.targets: trainable parameters per user, base and
        final mean test perplexity, the decrease and the decrease per million trainable parameters
        (runs with lora.targets = [full] are labelled "full fine-tuning"). Writes
        placement.{md,csv,json,png} into the common parent of the run directories.

From Python: ``write_table4(dirs)``, ``write_trust(d)``, ``write_bytes(d)``, ``write_topology(full, ring)``,
``write_placement(dirs)`` (each takes ``out=`` and returns ``{"md": path, "csv": ..., "json": ..., "png": ...}``);
the numbers come from small pure functions (:func:`trust_closeness`, :func:`offdiag_normalised`,
:func:`first_step_reaching`, :func:`mean_std`, :func:`message_size_ratios`, :func:`mean_ppl_series`).
User errors raise :class:`AnalysisError` (no finished run, no trust record, ...) or, for a missing or
unreadable run directory, :class:`trustlora.rundir.RunDirError`; both are :class:`trustlora.config.UserError`,
which the CLI reports in one line with exit code 2.

Modules: :mod:`.common` (:class:`AnalysisError`, the default output directory), :mod:`.numbers` (the pure
functions), and one per command: :mod:`.table4`, :mod:`.trust`, :mod:`.messages` (``bytes``), :mod:`.topology`,
:mod:`.placement`. Runs are read by :mod:`trustlora.rundir` (``Run``, ``load_run``, ``find_runs``,
``read_config``, ``cfg_get``, ``mean_ppl_series`` and ``w_by_round`` are re-exported here), tables written by
:mod:`trustlora.tables`, figures drawn with :mod:`trustlora.plots`.
"""

from __future__ import annotations

from trustlora.analyze.common import AnalysisError
from trustlora.analyze.messages import write_bytes
from trustlora.analyze.numbers import (
    chance_top_peer,
    first_step_reaching,
    mean_std,
    message_size_ratios,
    offdiag_normalised,
    trust_closeness,
)
from trustlora.analyze.placement import write_placement
from trustlora.analyze.table4 import write_table4
from trustlora.analyze.topology import write_topology
from trustlora.analyze.trust import write_trust
from trustlora.rundir import Run, cfg_get, find_runs, load_run, mean_ppl_series, read_config, w_by_round

__all__ = [
    "AnalysisError",
    "Run",
    "read_config",
    "cfg_get",
    "load_run",
    "find_runs",
    "w_by_round",
    "mean_std",
    "trust_closeness",
    "chance_top_peer",
    "offdiag_normalised",
    "mean_ppl_series",
    "first_step_reaching",
    "message_size_ratios",
    "write_table4",
    "write_trust",
    "write_bytes",
    "write_topology",
    "write_placement",
]
