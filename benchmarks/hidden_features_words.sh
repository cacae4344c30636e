#!/usr/bin/env bash
# Does feeding the controller hidden-state features help? (docs/prr_training.md, "Hidden-state features")
# Trains a PRR controller on the testbed model's "words" family with and without --hidden-features 8 (same 96
# training / 32 validation prompts of the valid split), then evaluates both on 200 held-out test prompts and
# compares them paired (prr_testbed.stats.paired_comparison). Round 0 only (CPU time). CPU, about 7 minutes on 2 cores.
#   usage: benchmarks/hidden_features_words.sh [PYTHON]   (run from the repository root)
set -euo pipefail
PY=${1:-python}
OUT=benchmarks/results/hidden_features
WORK=${WORK:-/tmp/prr_hidden_features_runs}
mkdir -p "$OUT" "$WORK"
$PY - "$WORK" <<'PYEOF'
import json, sys
from prr_testbed import tasks as T
work = sys.argv[1]
valid = T.heldout_set("words", "valid", 128)      # training and validation prompts: the valid split only
test = T.heldout_set("words", "test", 200)        # evaluation: the test split (disjoint by prompt hash)
def write(name, exs, answers):
    with open(f"{work}/{name}.jsonl", "w") as f:
        for e in exs:
            f.write(json.dumps({"prompt": e.prompt, **({"answer": e.answer} if answers else {})}) + "\n")
write("val", valid[:32], True); write("train", valid[32:], False); write("test", test, True)
PYEOF
CANVAS="--gen-length 48 --block-length 16 --device cpu --no-progress --checker gsm8k"
for R in 0 8; do
  rm -rf "$WORK/run_h$R"
  $PY -m prr_ext.train --model "$($PY -c 'import prr_testbed; print(prr_testbed.MODEL_DIR)')" \
      --data "$WORK/train.jsonl" --val "$WORK/val.jsonl" --out "$WORK/run_h$R" --rounds 0 --tau-grid 0.9,0.99,0.999 --hidden-features $R $CANVAS
  cp "$WORK/run_h$R/report.json" "$OUT/train_h$R.json"
  $PY -m prr_ext.eval --model "$($PY -c 'import prr_testbed; print(prr_testbed.MODEL_DIR)')" \
      --data "$WORK/test.jsonl" --controller "$WORK/run_h$R/controller" --policies lowconf,prr $CANVAS \
      --out "$OUT/eval_h$R.json"
done
$PY - "$OUT" <<'PYEOF'
import json, sys
from prr_testbed.stats import paired_comparison
out = sys.argv[1]
a, b = (json.load(open(f"{out}/eval_h{r}.json")) for r in (8, 0))
pa, pb = a["points"][1], b["points"][1]
cmp = paired_comparison(pa["correct"], pb["correct"], names=("hidden-8", "base"))
from prr_testbed.stats import bootstrap_interval
d_nfe = [x - y for x, y in zip(pa["nfe_per_prompt"], pb["nfe_per_prompt"])]
summary = {"accuracy": cmp, "nfe_difference": sum(d_nfe) / len(d_nfe),
           "nfe_difference_interval": list(bootstrap_interval(d_nfe)),
           "rows": [{"controller": name, "label": p["label"], "accuracy": p["accuracy"], "mean_nfe": p["mean_nfe"]}
                    for name, doc in (("base (13 features)", b), ("hidden-8 (13 + 8)", a))
                    for p in doc["points"]]}
json.dump(summary, open(f"{out}/comparison.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PYEOF
