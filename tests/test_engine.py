"""The batched LM engine: cached, padded forwards equal plain ones, batches are never changed in place,
action scores carry gradients, and hooks can stop a pass."""

from __future__ import annotations

import pytest
import torch

from llmrl.engine import Engine, StopForward, common_prefix

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = [1, 17, 23, 99, 5]
ROWS = [[40, 41, 42], [50], [60, 61]]
ACTIONS = [[70], [71, 72], [73, 74, 75]]


def plain_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.fixture
def engine(tiny) -> Engine:
    return Engine(tiny.model, tiny.tokenizer.pad_token_id)


def test_left_padded_rows_on_a_cached_prefix_equal_plain_forwards(engine):
    with torch.no_grad():
        _, prefix = engine.run(None, [PREFIX])
        last, batch = engine.answer(prefix, ROWS)
    for i, row in enumerate(ROWS):
        torch.testing.assert_close(last[i], plain_last_logits(engine.model, PREFIX + row), atol=1e-4, rtol=0)
    assert batch.rows == 3 and batch.next_pos.tolist() == [len(PREFIX) + len(r) for r in ROWS]
    assert batch.mask.sum(1).tolist() == batch.next_pos.tolist()


def test_right_padded_rows_keep_their_columns(engine):
    with torch.no_grad():
        logits, _ = engine.run(None, [PREFIX + r for r in ROWS], align="right", keep=torch.arange(8))
    for i, row in enumerate(ROWS):
        end = len(PREFIX) + len(row) - 1
        torch.testing.assert_close(logits[i, end].float(), plain_last_logits(engine.model, PREFIX + row),
                                   atol=1e-4, rtol=0)


def test_a_batch_is_never_changed_by_running_on_it(engine):
    with torch.no_grad():
        _, prefix = engine.run(None, [PREFIX])
        kv = [(k.clone(), v.clone()) for k, v in prefix.kv]
        first, _ = engine.answer(prefix, ROWS)
        engine.answer(prefix, [[9, 9, 9, 9]])
        again, _ = engine.answer(prefix, ROWS)
    assert torch.equal(first, again) and prefix.rows == 1
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(prefix.kv, kv))


def test_encode_runs_the_common_prefix_once_and_equals_separate_rows(engine):
    rows = [PREFIX + r for r in ROWS]
    assert common_prefix(rows, 100) == len(PREFIX)
    calls = []
    engine.observer = lambda n, length, context, keep, seconds: calls.append((n, length))
    with torch.no_grad():
        batch = engine.encode(rows)
        logits, _ = engine.run(batch, [[7]] * 3, align="right")
    assert calls[:2] == [(1, len(PREFIX)), (3, 3)]  # the prefix once, then only the rests
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i, -1].float(), plain_last_logits(engine.model, row + [7]),
                                   atol=1e-4, rtol=0)


def test_action_logprobs_sum_every_token_of_every_action_with_gradients(engine):
    _, prefix = engine.run(None, [PREFIX])
    last, batch = engine.answer(prefix, ROWS)
    first = torch.log_softmax(last, -1)
    scores = engine.action_logprobs(batch, first, ACTIONS)
    assert scores.shape == (3, 3)
    for i, row in enumerate(ROWS):
        for j, action in enumerate(ACTIONS):
            expected = sum(torch.log_softmax(plain_last_logits(engine.model, PREFIX + row + action[:t]), -1)[a]
                           for t, a in enumerate(action))
            assert float(scores[i, j].detach()) == pytest.approx(float(expected), abs=1e-4)
    scores.sum().backward()
    grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    engine.model.zero_grad(set_to_none=True)


def test_a_hook_can_stop_the_pass_after_the_layers_it_needs(engine):
    block = engine.model.model.layers[0]
    handle = block.register_forward_hook(lambda *_: (_ for _ in ()).throw(StopForward()))
    try:
        with torch.no_grad():
            logits, batch = engine.run(None, [PREFIX])
    finally:
        handle.remove()
    assert logits is None and len(batch.kv) == 1 and batch.next_pos.tolist() == [len(PREFIX)]


def test_a_frozen_models_output_layer_reads_a_contiguous_input_without_changing_a_logit(tiny):
    """Frozen weights no longer send the output layer into matmul's batched, weight-copying product
    (the slow path an attached adapter took): with no gradient taken its input gets fresh row-major
    strides (a one-row slice counts as contiguous without them), once per model however many engines run
    it, and the logits equal those of the trainable model bit for bit. Forwards that take gradients are
    left as they were."""
    model, pad = tiny.model, tiny.tokenizer.pad_token_id
    seen: list[bool] = []
    engines = [Engine(model, pad) for _ in range(3)]
    head = model.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 1
    head.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].stride() == torch.empty(args[0].shape).stride()))
    with torch.inference_mode():
        trainable = [engines[0].answer(None, rows)[0] for rows in (ROWS, ROWS[:1])]
    model.requires_grad_(False)
    try:
        with torch.inference_mode():
            frozen = [engines[1].answer(None, rows)[0] for rows in (ROWS, ROWS[:1])]
        engines[2].answer(None, ROWS)  # grad mode on, as in training
    finally:
        model.requires_grad_(True)
    assert all(torch.equal(a, b) for a, b in zip(trainable, frozen))
    assert seen == [True, True, True, True, False]
