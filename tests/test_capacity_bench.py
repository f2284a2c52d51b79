"""``llmrl bench edits``: every method inserts, measures, erases and undoes exactly, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from llmrl.capacity import bench
from llmrl.capacity.pool import build_pool, save_pool
from llmrl.cards import get_card
from llmrl.cli import main
from llmrl.strategies import METHODS
from tests.helpers import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"method", "items", "sequential", "reliability", "generalization", "locality_kl", "locality_top1",
        "edit_seconds", "params_touched", "erase_ok", "undo_exact"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "pool.json"
    save_pool(path, build_pool(16, seed=0, cards=["CartPole-v1", "MountainCar-v0"], episodes=6, max_steps=40))
    return path


def bench_json(capsys, pool, *extra: str) -> dict:
    assert main(["bench", "edits", "--pool", str(pool), "--model", "tiny", "--dtype", "float32", "--json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


# weights statistics from 2,000 corpus tokens: the default 20,000 took 78 s of the first ROME cell in a fresh cache
SMALL_CORPUS = ["--set", "stats_tokens=2000"]

# eleven adapter trainings and their replays take a minute and more: the slow set
CASES = [pytest.param(m, s, id=f"{m}-{'sequential' if s else 'batch'}",
                      marks=[pytest.mark.slow] if s and METHODS[m].strategy == "adapter" else [])
         for m in METHODS for s in (False, True)]


@pytest.mark.parametrize("method, sequential", CASES)
def test_every_method_inserts_erases_and_undoes_exactly(capsys, pool, method, sequential):
    # at an adapter's default 40 steps a training, a method took about a minute on one thread; what is checked
    # here (erase and undo) does not depend on how well the adapter learned
    short = {"adapter": ["--set", "steps=8"], "weights": SMALL_CORPUS}.get(METHODS[method].strategy, [])
    out = bench_json(capsys, pool, "--method", method, "--items", "11", *(["--sequential"] if sequential else []),
                     *short)
    assert KEYS <= set(out) and (out["method"], out["items"], out["sequential"]) == (method, 11, sequential)
    assert sum(out["origins"].values()) == 11
    for key in ("reliability_before", "reliability", "generalization", "locality_top1"):
        assert 0 <= out[key] <= 1
    assert out["reliability_changed"] is None or 0 <= out["reliability_changed"] <= 1
    parts = [x for x in (out["generalization_fresh"], out["generalization_reworded"]) if x is not None]
    assert out["generalization"] == pytest.approx(sum(parts) / len(parts))
    assert out["locality_kl"] >= 0
    if method == "alphaedit":
        # with these statistics the tiny model's key covariance has no eigenvalue below 1 % of its
        # largest: AlphaEdit's null space is empty and its update zero (test_inject_null_space.py edits there)
        assert out["params_touched"] == 0
    else:
        assert (out["params_touched"] > 0) == (METHODS[method].strategy != "context")
    assert out["undo_exact"] is True
    # one item, then the ten left: with all eleven erased, nothing is in force and every choice is the
    # untouched model's again
    one, ten = out["erase"]
    assert (one["erased"], ten["erased"]) == (1, 10)
    assert ten["restored"] == 1.0 and ten["kept"] is None


def test_reliability_on_changed_examples_leaves_out_those_the_model_already_chose(pool):
    from llmrl.capacity.pool import load_pool
    from llmrl.models import load_model

    lm = load_model("tiny", "cpu", "float32")
    items = load_pool(pool)[:8]
    run = bench._Bench(lm, items, "context", sequential=False, options={})
    agree = [(p, t) for p in items for t in p.item.examples if run._word(p.card, t) == p.item.action]
    differ = [(p, t) for p in items for t in p.item.examples if run._word(p.card, t) != p.item.action]
    assert agree and differ  # the pool's actions are the table's opposite, not the model's
    assert run.reliability(items) == pytest.approx(len(agree) / (len(agree) + len(differ)))
    assert run.reliability(items, changed=True) == 0.0  # untouched: none of those is chosen yet


def test_an_erased_item_is_expected_to_follow_a_coarser_item_left(pool):
    from llmrl.capacity.pool import PoolItem, load_pool
    from llmrl.cards import situation_of
    from llmrl.knowledge import KnowledgeItem
    from llmrl.models import load_model

    lm = load_model("tiny", "cpu", "float32")
    fine = next(p for p in load_pool(pool) if p.origin == "observation")
    (text,) = fine.item.examples
    words = get_card(fine.card)[0].action_words
    other = next(w for w in words if w != fine.item.action)
    coarse = PoolItem(fine.card, KnowledgeItem(situation_of(text), other, 1.0, 1, examples=[text]), "counterfactual")
    run = bench._Bench(lm, [fine, coarse], "rag", sequential=False, options={})
    untouched = run.untouched_batch([fine])
    assert untouched == [run._word(fine.card, text)]
    run.insert()
    run.erase([fine])
    assert run.expected([fine], untouched) == [other]  # the situation's item still holds the text
    run.erase([coarse])
    assert run.expected([fine], untouched) == untouched  # nothing left: the untouched model's choice
    assert run.restored([fine], untouched) == 1.0


def test_erasing_everything_restores_every_choice_in_bf16(pool):
    """bf16 scores move with a batch's shape; the erased examples are compared in identical batches."""
    from llmrl.capacity.pool import load_pool
    from llmrl.models import load_model

    lm = load_model("tiny", "cpu", "bfloat16")
    items = load_pool(pool)
    run = bench._Bench(lm, items, "rag", sequential=False, options={})
    untouched = run.untouched_batch(items)
    policy = run.tasks[items[0].card][0]
    texts = [t for p in items if p.card == items[0].card for t in p.item.examples]
    first = policy.scores(texts, cached=False)
    run.insert()
    assert not torch.equal(policy.scores(texts, cached=False), first)  # the retrieved cases are read
    run.erase(items)
    assert run.restored(items, untouched) == 1.0


def test_undo_exact_fails_when_an_edit_stays(capsys, pool, monkeypatch):
    monkeypatch.setattr(bench.Learner, "undo_to", lambda self, n: None)
    assert bench_json(capsys, pool, "--method", "memit", "--items", "3", *SMALL_CORPUS)["undo_exact"] is False


def test_the_terminal_shows_every_measurement_and_each_erase(capsys, pool):
    out = bench_json(capsys, pool, "--method", "rag", "--items", "12")
    assert main(["bench", "edits", "--pool", str(pool), "--model", "tiny", "--dtype", "float32",
                 "--method", "rag", "--items", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rag, 12 items (batch) on tiny"
    shown = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert shown["reliability"] == f"{out['reliability']:.4g}" and shown["locality_kl"] == f"{out['locality_kl']:.4g}"
    assert (shown["undo_exact"], shown["params_touched"]) == ("True", "0")
    ten = out["erase"][1]
    assert shown["erase 10"] == f"restored {ten['restored']:.4g}, items left {ten['kept']:.4g} (before: " \
                                f"{ten['kept_before']:.4g})"


def test_the_digest_sees_a_weights_edit_and_not_a_context_edit(pool):
    from llmrl.capacity.pool import load_pool
    from llmrl.models import load_model

    lm = load_model("tiny", "cpu", "float32")
    items = load_pool(pool)[:4]
    before = bench.model_digest(lm)
    for method, changes in (("context", False), ("memit", True)):
        run = bench._Bench(lm, items, method, sequential=False, options={"stats_tokens": 2000} if changes else {})
        run.insert()
        assert (bench.model_digest(lm) != before) == changes
        run.learner.undo_to(0)
        assert bench.model_digest(lm) == before


def test_set_changes_the_methods_options_and_the_record_says_so(capsys, pool):
    out = bench_json(capsys, pool, "--method", "rag", "--items", "4", "--set", "k=1", "--set", "max_tokens=200")
    assert out["options"] == {"k": 1, "max_tokens": 200}
    # the method's own options stay unless set, and the record holds every option it ran with
    assert (out["injector"]["rules"], out["injector"]["k"], out["injector"]["max_tokens"]) == (False, 1, 200)
    default = bench_json(capsys, pool, "--method", "rag", "--items", "4")["injector"]
    assert default["k"] == dict(METHODS["rag"].options)["k"]
    picked = bench_json(capsys, pool, "--method", "context", "--items", "3", "--origins", "counterfactual,observation")
    assert picked["origins"]["run"] == 0 and sum(picked["origins"].values()) == 3


def test_bench_edits_errors(capsys, pool, tmp_path):
    assert "unknown method 'nope'" in one_error_line(capsys, "bench", "edits", "--method", "nope", "--items", "2",
                                                     "--pool", str(pool), "--model", "tiny")
    assert "--items must be at least 1" in one_error_line(capsys, "bench", "edits", "--method", "context",
                                                          "--items", "0", "--pool", str(pool), "--model", "tiny")
    assert "more than the pool's 16 items" in one_error_line(
        capsys, "bench", "edits", "--method", "context", "--items", "17", "--pool", str(pool), "--model", "tiny")
    assert "bad strategy_options for context" in one_error_line(
        capsys, "bench", "edits", "--method", "rag", "--items", "1", "--pool", str(pool), "--model", "tiny",
        "--set", "k=0")
    assert "--set wants key=value" in one_error_line(
        capsys, "bench", "edits", "--method", "rag", "--items", "1", "--pool", str(pool), "--set", "k")
    assert "origins must be some of run, counterfactual, observation" in one_error_line(
        capsys, "bench", "edits", "--method", "rag", "--items", "1", "--pool", str(pool), "--origins", "run,nope")
    assert "more than the pool's 4 items of origins run" in one_error_line(
        capsys, "bench", "edits", "--method", "rag", "--items", "5", "--pool", str(pool), "--origins", "run")
    (tmp_path / "bad.json").write_text("[1]")
    assert "cannot read the item pool" in one_error_line(
        capsys, "bench", "edits", "--method", "context", "--items", "1", "--pool", str(tmp_path / "bad.json"))


def test_cards_holding_run_items_are_played_before_and_after(capsys, pool):
    from llmrl.capacity.pool import load_pool

    run_cards = sorted({p.card for p in load_pool(pool) if p.origin == "run"})
    assert run_cards  # the shipped run items reach the pool's cards
    out = bench_json(capsys, pool, "--method", "context", "--items", "16", "--episodes", "2", "--max-steps", "5")
    assert sorted(out["returns"]) == run_cards == ["CartPole-v1"]  # MountainCar has no run items
    assert all(0 < r <= 5 for r in out["returns"]["CartPole-v1"].values())  # +1 a step, five steps at most
    assert bench_json(capsys, pool, "--method", "context", "--items", "16")["returns"] == {}
