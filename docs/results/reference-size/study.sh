#!/bin/bash
# reference_tokens validation study: predictions, one seed, 4 families x X_S sizes
. .venv/bin/activate && mkdir -p runs/ref  # run from the repository root
for R in 1024 512; do
for fam in default cpu/news-high cpu/multilingual-high cpu/codewiki-high; do
  name=$(echo $fam | tr / -)-$R
  [ -f runs/ref/$name/summary.json ] && continue
  echo "== $name $(date +%T)"
  trustlora run --no-progress --config configs/$fam.yaml strategy=predictions data.reference_tokens=$R out=runs/ref/$name > runs/ref/$name.log 2>&1 || echo "FAILED $name"
done; done
echo "== done $(date +%T)"
