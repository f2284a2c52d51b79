#!/bin/bash
# Two llmrl processes on one machine: decisions/s of a few-shot CartPole evaluation alone, then two at once,
# under each thread setting (issue 21's contention target: each of two keeps >= 40 % of its solo rate).
# Run from the repository root with nothing else running: bash scripts/contention.sh
E=".venv/bin/python -m llmrl eval --env CartPole-v1 --policy few-shot --episodes 16 --n-envs 8 --max-steps 200 --json"
out=$(mktemp -d)
rate() { tail -1 "$1" | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"{r['decisions_per_s']:.1f} ({r['threads']} threads)\")"; }
solo() { $E $1 > "$out/solo.json" 2>/dev/null; echo "$2 alone: $(rate "$out/solo.json")"; }
pair() { $E $1 > "$out/a.json" 2>/dev/null & $E $2 > "$out/b.json" 2>/dev/null; wait
         echo "$3 side by side: $(rate "$out/a.json") and $(rate "$out/b.json")"; }
solo "--threads 2" "one thread per core"
pair "--threads 2" "--threads 2" "one thread per core, both"
solo "--threads 1" "one thread"
pair "--threads 1" "--threads 1" "one thread, both"
pair "--threads 2" "--threads 1" "one thread per core beside one thread"
solo "" "llmrl's default (llmrl.cores)"
pair "" "" "llmrl's default, started together"
$E > "$out/a.json" 2>/dev/null & (sleep 4; $E > "$out/b.json" 2>/dev/null); wait
echo "llmrl's default, the second started 4 s later: $(rate "$out/a.json") and $(rate "$out/b.json")"
rm -r "$out"
