"""Small helpers shared by several test files."""

from __future__ import annotations

import torch

from llmrl.cards import Card, get_card
from llmrl.prompts import render


def start_texts(env_id: str, seeds: int) -> tuple[Card, list[str]]:
    """The card of ``env_id`` and the observation texts of its first state for seeds ``0..seeds-1``."""
    card, _ = get_card(env_id)
    env = card.make_env()
    texts = []
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        texts.append(card.text(obs, env)[0])
    return card, texts


def reference_scores(lm, prompt, texts, normalization):
    """Scores from one plain, uncached, unbatched forward per (text, action)."""
    r = render(prompt, lm.tokenizer)
    lead = " " if prompt.reasoning else r.lead
    tok = lm.tokenizer
    rows = []
    for text in texts:
        context = (tok(r.prefix, add_special_tokens=False).input_ids
                   + tok(text + r.suffix, add_special_tokens=False).input_ids)
        row = []
        for word in prompt.action_words:
            answer = tok(lead + word, add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = lm.model(torch.tensor([context + answer], device=lm.device)).logits[0]
                logp = torch.log_softmax(logits.float(), -1)
            total = sum(logp[len(context) - 1 + k, t].item() for k, t in enumerate(answer))
            row.append(total / {"sum": 1, "token": len(answer), "word": len(word.split())}[normalization])
        rows.append(row)
    return torch.tensor(rows)


def one_error_line(capsys, *args: str) -> str:
    """Run the command line; it must fail with exit code 2 and one ``llmrl: error:`` line, no traceback."""
    from llmrl.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmrl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def fresh_tiny(seed: int, name: str):
    """A tiny model of its own (edits to it touch no other test) with the default model's tokenizer."""
    from transformers import AutoTokenizer

    from llmrl.models import LoadedModel, default_model_dir, tiny_model

    return LoadedModel(tiny_model(seed=seed), AutoTokenizer.from_pretrained(default_model_dir()), name,
                       torch.device("cpu"), torch.float32)


def first_texts_by_situation(env_id: str, seeds: int) -> dict[str, list[str]]:
    """The first observation text of seeds ``0..seeds-1``, grouped by situation."""
    card, texts = start_texts(env_id, seeds)
    env = card.make_env()
    out: dict[str, list[str]] = {}
    for seed, text in enumerate(texts):
        obs, _ = env.reset(seed=seed)
        out.setdefault(card.text(obs, env)[1], []).append(text)
    return out
