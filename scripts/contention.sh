#!/bin/bash
# Two llmrl processes on one machine: decisions/s of a few-shot CartPole evaluation alone, then two at
# once, under each thread setting (issue 21's contention target: each of two keeps >= 40 % of its solo
# rate). Run from the repository root with nothing else running: bash scripts/contention.sh
E=".venv/bin/llmrl eval --env CartPole-v1 --policy few-shot --episodes 8 --n-envs 8 --max-steps 150 --json"
out=$(mktemp -d)
rate() { tail -1 "$1" | python3 -c "import json,sys; print(f\"{json.load(sys.stdin)['decisions_per_s']:.1f}\")"; }
one() {  # label, environment settings
  env $2 $E > "$out/solo.json" 2>/dev/null
  env $2 $E > "$out/a.json" 2>/dev/null & env $2 $E > "$out/b.json" 2>/dev/null; wait
  echo "$1: solo $(rate "$out/solo.json"), pair $(rate "$out/a.json") and $(rate "$out/b.json") decisions/s"
}
one "torch's default threads" "LLMRL_CONTENTION=1"
one "OMP_NUM_THREADS=1" "OMP_NUM_THREADS=1"
one "OMP_WAIT_POLICY=PASSIVE" "OMP_WAIT_POLICY=PASSIVE"
one "OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=1" "OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1"
rm -r "$out"
