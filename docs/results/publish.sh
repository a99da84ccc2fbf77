#!/usr/bin/env bash
# Copy a finished `trustlora compare` directory into docs/results/<name>/ with its trust analysis.
#   bash docs/results/publish.sh runs/cpu-news-high cpu-news-high
# Keeps comparison.{md,csv,json,png}, trust.{md,csv,json} + figures (analyze trust), and for every strategy
# its report.md, summary.json, config.yaml and figures (adapters and checkpoints stay out of git).
set -euo pipefail
src=$1; name=$2; dst=docs/results/$name
mkdir -p "$dst"
cp "$src"/comparison.* "$dst"/
trustlora analyze trust "$src" --out "$dst"/trust
for run in "$src"/*-seed*/; do
  strategy=$(basename "$run")
  mkdir -p "$dst/$strategy"
  cp "$run"/{report.md,summary.json,config.yaml,W_final.png,curves.png} "$dst/$strategy"/ 2>/dev/null || true
done
du -sh "$dst"
