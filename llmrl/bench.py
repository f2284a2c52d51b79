"""Throughput benchmark: the loop a user would write against llmrl's policy, in one run.

The naive loop renders the whole chat prompt every step, calls ``generate``
and parses the answer, one environment at a time, no caches. The llmrl policy
scores action words over a cached prefix, batches K environments per forward
and skips texts it has already scored. Both play the same card with the same
zero-shot prompt. The arithmetic rate on uncached tokens is compared with a
plain matmul in the model's dtype timed in the same process, since these machines are noisy.
"""

from __future__ import annotations

import time

import torch

from llmrl.baselines import make_baseline
from llmrl.cards import get_card
from llmrl.errors import UsageError
from llmrl.models import LoadedModel, load_model
from llmrl.policy import LLMPolicy
from llmrl.prompts import card_prompt
from llmrl.rollout import rollout


def matmul_gflops(n: int = 1024, seconds: float = 1.0, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> float:
    """Best-of-runs GFLOP/s of an n x n matmul: the machine's attainable rate."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if a.is_cuda:
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def naive_loop(lm: LoadedModel, env: str, steps: int, max_new_tokens: int = 8) -> tuple[float, int]:
    """Decisions/s of generate-and-parse with the full prompt every step; returns (rate, prompt tokens)."""
    card, variant = get_card(env)
    prompt = card_prompt(card)
    parser = LLMPolicy(lm, prompt)  # only its answer parser is used
    tok, model = lm.tokenizer, lm.model
    env_ = card.make_env(variant)
    obs, _ = env_.reset(seed=0)
    values = list(card.actions.values())
    prompt_tokens = 0
    t0 = time.perf_counter()
    for step in range(steps):
        messages = [{"role": "system", "content": prompt.system_text()},
                    {"role": "user", "content": card.text(obs, env_)[0]}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"].to(lm.device)
        prompt_tokens = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        action = parser.parse(answer)
        obs, _, terminated, truncated, _ = env_.step(values[card.action_words.index(card.default_action_word)]
                                                     if action is None else values[action])
        if terminated or truncated:
            obs, _ = env_.reset(seed=step + 1)
    rate = steps / (time.perf_counter() - t0)
    env_.close()
    return rate, prompt_tokens


def policy_loop(lm: LoadedModel, env: str, steps: int, n_envs: int) -> dict:
    """Decisions/s of the zero-shot llmrl policy playing episodes until ``steps`` decisions.

    Episodes run whole, except that play stops at ``steps`` (an Atari episode is thousands of decisions).
    """
    card, variant = get_card(env)
    policy = make_baseline("zero-shot", card, lm)
    assert isinstance(policy, LLMPolicy)
    t0 = time.perf_counter()
    seed, suffix_tokens = 0, []
    while policy.stats.decisions < steps:
        trajectories = rollout(policy, card, episodes=n_envs, seed=seed, n_envs=n_envs, variant=variant,
                               step_budget=steps - policy.stats.decisions)
        seed += n_envs
        suffix_tokens += [len(policy.suffix_ids(s.text)) for t in trajectories for s in t.steps[:1]]
    wall = time.perf_counter() - t0
    s = policy.stats
    return {
        "decisions": s.decisions, "decisions_per_s": s.decisions / wall, "cache_hit_rate": s.cache_hit_rate,
        "achieved_gflops": s.flops / s.model_seconds / 1e9 if s.model_seconds else 0.0,
        "uncached_tokens": s.tokens, "prefix_tokens": policy.prefix_tokens,
        "suffix_tokens": sum(suffix_tokens) / len(suffix_tokens),
    }


def throughput(env: str = "CartPole-v1", steps: int = 2000, naive_steps: int = 30, n_envs: int = 16,
               model: str | None = None, device: str = "auto", dtype: str = "auto", frozen: bool = False) -> dict:
    """Run both loops and the matmul probe; returns the figures ``llmrl bench throughput`` prints.

    ``frozen``: every weight stops requiring grad first, as with an adapter attached; a frozen model once
    took a slower product in its output layer (``llmrl.engine.contiguous_head``), so this checks for that.
    """
    if steps < 1 or naive_steps < 1 or n_envs < 1:
        raise UsageError("--steps, --naive-steps and --n-envs must be >= 1")
    lm = load_model(model, device, dtype)
    lm.model.requires_grad_(not frozen)
    matmul = matmul_gflops(device=lm.device, dtype=lm.dtype)
    naive, prompt_tokens = naive_loop(lm, env, naive_steps)
    ours = policy_loop(lm, env, steps, n_envs)
    return {
        "env": env, "model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "frozen": frozen, "n_envs": n_envs, "naive_steps": naive_steps,
        "naive_prompt_tokens": prompt_tokens, "naive_decisions_per_s": naive,
        **ours, "speedup": ours["decisions_per_s"] / naive, "matmul_gflops": matmul,
        "matmul_fraction": ours["achieved_gflops"] / matmul,
    }
