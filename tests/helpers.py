"""Small helpers shared by several test files."""

from __future__ import annotations

from llmrl.cards import Card, get_card


def start_texts(env_id: str, seeds: int) -> tuple[Card, list[str]]:
    """The card of ``env_id`` and the observation texts of its first state for seeds ``0..seeds-1``."""
    card, _ = get_card(env_id)
    env = card.make_env()
    texts = []
    for seed in range(seeds):
        obs, _ = env.reset(seed=seed)
        texts.append(card.text(obs, env)[0])
    return card, texts
