#!/usr/bin/env bash
# Copy a finished `trustlora compare` directory into docs/results/<name>/ with its trust analysis, and record
# how it was produced (command, wall time from the `time` output in LOG, machine) in docs/results/<name>/RUN.md.
#   bash docs/results/publish.sh runs/cpu-news-high cpu-news-high runs/cpu-news-high.log \
#       "trustlora compare --config configs/cpu/news-high.yaml out=runs/cpu-news-high"
# Keeps comparison.{md,csv,json,png}, trust.{md,csv,json} + figures (analyze trust), and for every strategy
# its report.md, summary.json, config.yaml and figures (adapters and checkpoints stay out of git).
set -euo pipefail
src=$1; name=$2; log=${3:-}; cmd=${4:-}
dst=docs/results/$name
mkdir -p "$dst"
cp "$src"/comparison.* "$dst"/
trustlora analyze trust "$src" --out "$dst"/trust
for run in "$src"/*-seed*/; do
  strategy=$(basename "$run")
  mkdir -p "$dst/$strategy"
  cp "$run"/{report.md,summary.json,config.yaml,W_final.png,curves.png} "$dst/$strategy"/ 2>/dev/null || true
done
if [ -n "$log" ]; then
  wall=$(grep -E '^real' "$log" | tail -1 | awk '{print $2}')
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  native=$(grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo "native bf16" || echo "no native bf16")
  # the precision the runs used (summary.json records it; older runs only have their config's setting)
  prec=$(python - "$src" <<'PY'
import json, pathlib, sys
import yaml
ps = set()
for run in pathlib.Path(sys.argv[1]).glob("*-seed*/"):
    p = json.loads((run / "summary.json").read_text()).get("precision")
    ps.add(p or "train.precision=" + str(yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"]))
print(", ".join(sorted(ps)))
PY
)
  tmp=$(mktemp "$dst/.RUN.md.XXXX")
  {
    echo "# $name"
    echo
    echo "- command: \`$cmd\`"
    echo "- wall time: $wall (all strategies, one process, including model load and evaluations)"
    echo "- machine: $(nproc) cores, $cpu, $(free -g | awk '/Mem:/{print $2}') GiB RAM, no GPU; $native; runs used precision: $prec"
    echo "- torch $(python -c 'import torch; print(torch.__version__)'), trustlora $(git rev-parse --short HEAD)"
    echo "- date: $(date -u +%Y-%m-%d)"
    echo
    cat "$dst/comparison.md"
  } > "$tmp"
  mv "$tmp" "$dst/RUN.md"
fi
du -sh "$dst"
