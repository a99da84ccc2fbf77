"""Collect the val-tokens study (runs/valtok/*) into results.json and a markdown table on stdout.

python docs/results/val-tokens/collect.py      # from the repository root, after study.sh
"""

import json
from pathlib import Path

root = Path("runs/valtok")
out = {}
for s_path in sorted(root.glob("*/summary.json")):
    s = json.loads(s_path.read_text())
    recs = [json.loads(x) for x in (s_path.parent / "metrics.jsonl").read_text().splitlines()]
    trust = [r for r in recs if r["kind"] == "trust"]
    q = s["trust_quality"]
    out[s_path.parent.name] = {
        "mean_val_ppl": sum(s["final_val_ppl"]) / len(s["final_val_ppl"]),
        "final_mean_test_ppl": s["final_mean_test_ppl"],
        "scm": q["same_category_mass"],
        "scm_rounds": [r["quality"]["same_category_mass"] for r in trust],
        "top_peer_accuracy": q["top_peer_accuracy"],
        "l1_to_oracle_offdiag": q["l1_to_oracle_offdiag"],
        "effective_peers": q["effective_peers"],
        "trust_positions": sum(r["positions"] for r in trust),
        "trust_s": s["phases"]["trust"]["seconds"],
        "train_s": s["phases"]["train"]["seconds"],
        "trust_tflop": s["phases"]["trust"]["flops"] / 1e12,
        "train_tflop": s["phases"]["train"]["flops"] / 1e12,
        "precision": s["precision"],
    }
(Path(__file__).parent / "results.json").write_text(json.dumps(out, indent=1) + "\n")
cols = "run, mean val ppl, SCM (final), SCM per round, L1 to oracle, eff. peers, trust / train FLOPs, trust / train s"
print("| " + " | ".join(cols.split(", ")) + " |")
print("|---|---:|---:|---|---:|---:|---:|---:|")
for name, r in out.items():
    rounds = " ".join(f"{x:.2f}" for x in r["scm_rounds"])
    print(
        f"| {name} | {r['mean_val_ppl']:.2f} | {r['scm']:.3f} | {rounds} | {r['l1_to_oracle_offdiag']:.3f} | "
        f"{r['effective_peers']:.2f} | {r['trust_tflop'] / r['train_tflop']:.2f} | {r['trust_s'] / r['train_s']:.2f} |"
    )
