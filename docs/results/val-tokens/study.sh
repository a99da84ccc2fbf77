#!/bin/bash
# trust.val_tokens validation study: strategy validation, one seed, 4 families x val-token budgets
. .venv/bin/activate && mkdir -p runs/valtok  # run from the repository root
for V in 512 256; do
for fam in default cpu/news-high cpu/multilingual-high cpu/codewiki-high; do
  name=$(echo $fam | tr / -)-$V
  [ -f runs/valtok/$name/summary.json ] && continue
  echo "== $name $(date +%T)"
  trustlora run --no-progress --config configs/$fam.yaml strategy=validation trust.val_tokens=$V out=runs/valtok/$name > runs/valtok/$name.log 2>&1 || echo "FAILED $name"
done; done
# the same cost by fewer peers instead of fewer tokens: trust.val_peers = k, (1 + k) / N ~ 1/2
for spec in default:2 cpu/news-high:3 cpu/multilingual-high:3 cpu/codewiki-high:3; do
  fam=${spec%%:*}; k=${spec##*:}
  name=$(echo $fam | tr / -)-512-k$k
  [ -f runs/valtok/$name/summary.json ] && continue
  echo "== $name $(date +%T)"
  trustlora run --no-progress --config configs/$fam.yaml strategy=validation trust.val_tokens=512 trust.val_peers=$k out=runs/valtok/$name > runs/valtok/$name.log 2>&1 || echo "FAILED $name"
done
echo "== peers done $(date +%T)"
# many users: N = 24 on the scaling preset (LibreOffice fr/it/de, batch 1, its trust.val_tokens 256), all vs k = 4
for k in all 4 8 12; do
  name=scale24-$k
  [ -f runs/valtok/$name/summary.json ] && continue
  echo "== $name $(date +%T)"
  trustlora run --no-progress --config configs/cpu/scale-multilingual.yaml data.users=24 strategy=validation trust.val_peers=$k out=runs/valtok/$name > runs/valtok/$name.log 2>&1 || echo "FAILED $name"
done
echo "== scale done $(date +%T)"
# N = 24 on two more families (their presets with data.users=24, 16,384 train tokens a user to fit): all vs k = 12
for fam in cpu/news-high cpu/codewiki-high; do
for k in all 12; do
  name=$(echo $fam | tr / -)-n24-$k
  [ -f runs/valtok/$name/summary.json ] && continue
  echo "== $name $(date +%T)"
  trustlora run --no-progress --config configs/$fam.yaml data.users=24 data.train_tokens=16384 strategy=validation trust.val_peers=$k out=runs/valtok/$name > runs/valtok/$name.log 2>&1 || echo "FAILED $name"
done; done
echo "== n24 done $(date +%T)"
