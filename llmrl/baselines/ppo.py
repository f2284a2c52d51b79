"""The PPO baseline: stable-baselines3 PPO on a card's environment, scored by the LLM policies' evaluator.

It answers "how much does plain RL need?" for the comparison. So it plays the
card's own environment and chooses among the card's action words (the choice
the language-model policies have). It is evaluated with
:func:`llmrl.evaluate.evaluate` on the seeds the editing loop uses, and its
budget counts training steps only.

Hyper-parameters come from ``configs/ppo/<env>.yaml``, else
``configs/ppo/<card family>.yaml`` (e.g. ``atari.yaml``): the RL Zoo's tuned
values where the Zoo has an entry, else stable-baselines3's defaults. A policy
reading another of the card's observations (``pixels``) takes the file with
that suffix (``atari-pixels.yaml``). The Zoo's ``lin_X`` schedules,
``normalize: true`` (VecNormalize) and the training side of its Atari wrapper
are supported. A
trained policy is saved twice: SB3's own ``ppo.zip``, and ``policy.safetensors``
plus ``ppo.json``. :func:`load_ppo_policy` rebuilds from the latter two only, so
loading never unpickles.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from minigrid.wrappers import FlatObsWrapper
from pydantic import Field, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.atari_wrappers import ClipRewardEnv, EpisodicLifeEnv, FireResetEnv, NoopResetEnv
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import ConstantSchedule, LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

import llmrl.configs
from llmrl.cards import Card, get_card
from llmrl.config import Strict, build, load_yaml
from llmrl.errors import UsageError
from llmrl.evaluate import eval_seed, evaluate
from llmrl.policy import Policy, PolicyStats

CONFIG_DIR = Path(llmrl.configs.__file__).parent / "ppo"
SB3_DEFAULTS = "stable-baselines3 defaults"
#: Environments the evaluator steps together; episodes are seeded one by one, so only batching rounding depends on it.
EVAL_ENVS = 8

_SB3 = {name: p.default for name, p in inspect.signature(PPO.__init__).parameters.items()}
_STATE = {"mean": "obs_rms.mean", "var": "obs_rms.var"}


class PPOHyperparameters(Strict):
    """One PPO setting in the RL Zoo's vocabulary; what is left out takes SB3's default.

    ``learning_rate`` and ``clip_range`` take a number or the Zoo's ``lin_X``:
    linear decay from X to 0 over the run's own budget. ``n_timesteps`` is the
    source's budget, kept for reference: :func:`train_ppo` trains ``total_steps``.
    """

    source: str = SB3_DEFAULTS
    n_timesteps: int | None = Field(None, ge=1)
    policy: Literal["MlpPolicy", "CnnPolicy"] = "MlpPolicy"
    n_envs: int = Field(1, ge=1)
    normalize: bool = False
    #: The training side of SB3's AtariWrapper: up to 30 no-op starts, FIRE to start, a lost life ends the
    #: training episode, rewards clipped to their sign. Frames come from the card ("pixels"), and ALE v5
    #: skips frames itself (so no frame skip here; rl-baselines3-zoo issue #222).
    atari_wrapper: bool = False
    #: Evaluate with actions sampled from the policy, not its most likely one, as the RL Zoo evaluates Atari
    #: agents (its enjoy.py: "deterministic by default except for atari games"). A greedy Atari policy can
    #: stall for good where one action must be pressed, e.g. FIRE after a lost ball in Breakout.
    sample_actions: bool = False
    learning_rate: float | str = _SB3["learning_rate"]
    n_steps: int = Field(_SB3["n_steps"], ge=1)
    batch_size: int = Field(_SB3["batch_size"], ge=2)
    n_epochs: int = Field(_SB3["n_epochs"], ge=1)
    gamma: float = Field(_SB3["gamma"], gt=0, le=1)
    gae_lambda: float = Field(_SB3["gae_lambda"], ge=0, le=1)
    clip_range: float | str = _SB3["clip_range"]
    normalize_advantage: bool = _SB3["normalize_advantage"]
    ent_coef: float = _SB3["ent_coef"]
    vf_coef: float = _SB3["vf_coef"]
    max_grad_norm: float = _SB3["max_grad_norm"]
    target_kl: float | None = _SB3["target_kl"]

    @field_validator("learning_rate", "clip_range")
    @classmethod
    def _schedule(cls, value: float | str) -> float | str:
        # YAML reads 1e-3 (no dot) as a string, so numbers in strings are accepted too.
        linear = isinstance(value, str) and value.startswith("lin_")
        try:
            number = float(value[4:] if linear else value)
        except ValueError:
            number = 0.0
        if number <= 0:
            raise ValueError(f"expected a positive number or lin_<positive number>, got {value!r}")
        return value if linear else number

    def ppo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of SB3's ``PPO`` besides the policy (schedules built, wrapper settings left out)."""
        kwargs = self.model_dump(exclude={"source", "n_timesteps", "policy", "n_envs", "normalize", "atari_wrapper",
                                             "sample_actions"})
        for key in ("learning_rate", "clip_range"):
            if isinstance(kwargs[key], str):
                # The Zoo's linear_schedule (progress_remaining * X), clamped at 0 where the last
                # rollout overshoots the budget.
                kwargs[key] = LinearSchedule(float(kwargs[key][4:]), 0.0, 1.0)
        return kwargs


def load_hyperparameters(env: str, observation: str | None = None, config_dir: Path = CONFIG_DIR) -> dict:
    """The resolved hyper-parameters of ``env``'s card, with their ``source``.

    From ``<config_dir>/<card key, '/' as '_'>[-<observation>].yaml``, else the
    card family's ``<family>[-<observation>].yaml``; a card with neither gets
    SB3's defaults with one environment.
    """
    if not Path(config_dir).is_dir():  # SB3's defaults under the Zoo's name would hide it
        raise UsageError(f"PPO's hyper-parameter folder {config_dir} is missing")
    card, _ = get_card(env)
    suffix = f"-{observation}" if observation else ""
    names = [card.key.replace("/", "_")] + ([card.family] if card.family else [])
    for name in names:
        path = Path(config_dir) / f"{name}{suffix}.yaml"
        if path.exists():
            return build(PPOHyperparameters, load_yaml(path), source=str(path)).model_dump()
    return build(PPOHyperparameters, {}, source=SB3_DEFAULTS).model_dump()


class CardActions(gym.ActionWrapper):
    """PPO chooses among the card's action words: action i is word i.

    The baseline then has the language-model policies' choice, and its actions
    are word indices already. BabyAI's actions the card leaves out (pick up,
    drop, toggle, done) serve no "go to" mission.
    """

    def __init__(self, env: gym.Env, card: Card):
        super().__init__(env)
        self._values = list(card.actions.values())
        self.action_space = spaces.Discrete(len(self._values))

    def action(self, action: Any) -> Any:
        return self._values[int(action)]


def observation_wrapper(env: gym.Env) -> gym.Env:
    """``env`` as PPO's MLP reads it.

    Box, discrete and multi-discrete observations pass as they are; SB3 one-hot
    encodes Discrete ones (FrozenLake, Taxi). MiniGrid / BabyAI dicts become
    FlatObsWrapper's vector: the 7x7x3 egocentric view plus the mission one-hot
    per character. The view alone (ImgObsWrapper) would not do: GoToLocal names
    a different object each episode. It is also the RL Zoo's MiniGrid wrapper.
    """
    space = env.observation_space
    if isinstance(space, spaces.Dict) and {"image", "mission"} <= set(space.spaces):
        return FlatObsWrapper(env)
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return env
    raise UsageError(f"the PPO baseline cannot read observations of {space}")


def training_env(env: gym.Env, card: Card, atari: bool = False) -> gym.Env:
    if atari:
        env = NoopResetEnv(env, noop_max=30)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(EpisodicLifeEnv(env))
    return CardActions(observation_wrapper(env), card)


@dataclass(frozen=True)
class ObsNormalization:
    """VecNormalize's observation statistics, frozen at one point of training."""

    mean: np.ndarray
    var: np.ndarray
    clip: float
    epsilon: float

    @classmethod
    def of(cls, vec: VecNormalize) -> ObsNormalization:
        return cls(vec.obs_rms.mean.copy(), vec.obs_rms.var.copy(), vec.clip_obs, vec.epsilon)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        # VecNormalize.normalize_obs, without the environment it wraps.
        scaled = (obs - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)


class PPOPolicy(Policy):
    """A trained SB3 actor-critic acting on the card environment's raw observations.

    It applies the training's preprocessing (observation wrapper, then
    VecNormalize statistics if any), so it plays wherever rollouts and
    :func:`~llmrl.evaluate.evaluate` run a card. It acts greedily, or with
    ``sample`` draws from its action distribution with its own generator, which
    each evaluation restarts from its seed.
    """

    reads_observations = True

    def __init__(self, env: str, net: ActorCriticPolicy, obs_normalization: ObsNormalization | None = None,
                 observation: str | None = None, sample: bool = False):
        card, variant = get_card(env)
        self.env, self.net, self.obs_normalization, self.observation = env, net, obs_normalization, observation
        self.sample = sample
        self._gen = torch.Generator()
        self.action_words = card.action_words
        self.stats = PolicyStats()
        reader = observation_wrapper(card.make_env(variant, observation=observation))
        reader.close()
        self._read = reader.observation if isinstance(reader, gym.ObservationWrapper) else np.asarray

    def prepare(self, observations: list) -> np.ndarray:
        """The batch the network reads for these raw observations."""
        batch = np.stack([self._read(obs) for obs in observations])
        return self.obs_normalization(batch) if self.obs_normalization else batch

    def act_on_observations(self, observations: list, slots: list[int]) -> list[int]:
        self.stats.decisions += len(observations)
        if not self.sample:
            actions, _ = self.net.predict(self.prepare(observations), deterministic=True)
            return [int(a) for a in actions]
        with torch.no_grad():
            obs, _ = self.net.obs_to_tensor(self.prepare(observations))
            probs = self.net.get_distribution(obs).distribution.probs.cpu()
        return torch.multinomial(probs, 1, generator=self._gen).squeeze(1).tolist()

    def reseed(self, seed: int) -> None:
        self._gen.manual_seed(seed)


@dataclass
class PPOResult:
    """One training run: its learning curve, final evaluation, cost and policy."""

    #: Evaluation points {"env_steps", "mean_return", "std_return", "returns"}, the first untrained.
    curve: list[dict]
    final_mean_return: float
    final_returns: list[float]
    #: Environment steps trained: ``total_steps`` rounded up to whole rollouts (n_steps x n_envs).
    env_steps: int
    #: The whole call, evaluations included.
    wall_seconds: float
    hyperparameters: dict
    model_path: str | None
    #: The final policy.
    policy: PPOPolicy


class _Evaluations(BaseCallback):
    """Evaluates at the start, each time another ``every`` steps are trained, and after the last update.

    Evaluation plays its own environments, greedily or with the policy's own
    generator, so it neither spends training steps nor changes the run. The
    points go to TensorBoard too, each with the seconds since ``start``. With
    ``stop_at``, training stops at the first point whose mean return reaches it.
    """

    def __init__(self, env: str, card: Card, variant: str | None, observation: str | None, seed: int,
                 every: int | None, total: int, episodes: int, max_steps: int | None, also_at: int | None,
                 sample: bool = False, start: float = 0.0, stop_at: float | None = None):
        super().__init__()
        self.start, self.stop_at, self.stopped = start, stop_at, False
        self.env, self.card, self.variant, self.observation, self.seed = env, card, variant, observation, seed
        self.sample = sample
        self.every, self.total, self.episodes, self.max_steps = every, total, episodes, max_steps
        self.next = every
        self.also_at = also_at if also_at and also_at < total else None
        self.curve: list[dict] = []
        #: The policy of the latest point.
        self.policy: PPOPolicy | None = None

    def evaluate(self) -> None:
        vec = self.model.get_vec_normalize_env()
        self.policy = PPOPolicy(self.env, self.model.policy, ObsNormalization.of(vec) if vec else None,
                                self.observation, self.sample)
        result, _ = evaluate(self.policy, self.card, "ppo", None, self.episodes, seed=self.seed,
                             n_envs=min(self.episodes, EVAL_ENVS), max_steps=self.max_steps,
                             variant=self.variant, progress=False)
        summary = result.summary()
        point = {"env_steps": self.num_timesteps, "mean_return": summary["mean_return"],
                 "std_return": summary["std_return"], "returns": summary["returns"],
                 "seconds": time.perf_counter() - self.start}
        self.curve.append(point)
        self.logger.record("eval/mean_return", point["mean_return"])
        self.logger.record("eval/std_return", point["std_return"])
        self.logger.dump(self.num_timesteps)

    def _on_training_start(self) -> None:
        self.evaluate()

    def _on_step(self) -> bool:
        # Points at or past the budget wait for the final update (_on_training_end).
        due = bool(self.every) and self.next <= self.num_timesteps < self.total
        extra = self.also_at is not None and self.also_at <= self.num_timesteps
        if due or extra:
            self.evaluate()
            while self.every and self.next <= self.num_timesteps:
                self.next += self.every
            if extra:
                self.also_at = None
            if self.stop_at is not None and self.curve[-1]["mean_return"] >= self.stop_at:
                self.stopped = True
                return False  # SB3 ends training here
        return True

    def _on_training_end(self) -> None:
        if not self.stopped:  # a stopped run's last point is of this very policy
            self.evaluate()


def train_ppo(env: str, seed: int, total_steps: int, eval_every: int | None = None, eval_episodes: int = 20,
              eval_max_steps: int | None = None, out: Path | None = None, hyperparameters: dict | None = None,
              device: str = "cpu", progress: bool = False, observation: str | None = None,
              eval_also_at: int | None = None, stop_at: float | None = None) -> PPOResult:
    """Train PPO on ``env``'s card for ``total_steps`` environment steps and evaluate it along the way.

    ``observation`` picks another of the card's observations ("pixels"), with
    its own hyper-parameters; ``eval_also_at`` adds an evaluation point (the
    editing loop's budget, when PPO trains longer).
    ``hyperparameters`` override the card's file (:func:`load_hyperparameters`).
    With ``stop_at``, training ends at the first evaluation whose mean return
    reaches it (``llmrl bench run`` times how long that takes).
    Evaluation episode i is reset with seed ``eval_seed(seed) + i``, as
    in the editing loop, far from the training seeds ``seed .. seed + n_envs - 1``.
    With ``out``, it writes TensorBoard logs, ``ppo.zip``, ``policy.safetensors``
    and ``ppo.json`` there.
    """
    if total_steps < 1:
        raise UsageError(f"total_steps must be >= 1, got {total_steps}")
    if (eval_every is not None and eval_every < 1) or eval_episodes < 1:
        raise UsageError("eval_every and eval_episodes must be >= 1")
    if eval_max_steps is not None and eval_max_steps < 1:
        raise UsageError(f"eval_max_steps must be >= 1, got {eval_max_steps}")
    card, variant = get_card(env)
    values = load_hyperparameters(env, observation)
    if hyperparameters:
        values["source"] += f"; overridden: {', '.join(sorted(hyperparameters))}"
        values.update(hyperparameters)
    hp = build(PPOHyperparameters, values, source="PPO hyper-parameters")
    t0 = time.perf_counter()
    vec = make_vec_env(lambda: card.make_env(variant, observation=observation), n_envs=hp.n_envs, seed=seed,
                       wrapper_class=training_env, wrapper_kwargs={"card": card, "atari": hp.atari_wrapper})
    if hp.normalize:
        if not isinstance(vec.observation_space, spaces.Box):
            vec.close()
            raise UsageError(f"normalize: true needs vector observations; {env} has {vec.observation_space}")
        # As the Zoo does: the reward is normalised with the algorithm's discount.
        vec = VecNormalize(vec, gamma=hp.gamma)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    model = PPO(hp.policy, vec, seed=seed, device=device, verbose=0,
                tensorboard_log=str(out / "tensorboard") if out else None, **hp.ppo_kwargs())
    if out is None:  # SB3 would otherwise make an empty folder in the temp dir for its logger
        model.set_logger(Logger(None, []))
    evaluations = _Evaluations(env, card, variant, observation, eval_seed(seed), eval_every, total_steps,
                               eval_episodes, eval_max_steps, eval_also_at, hp.sample_actions, t0, stop_at)
    try:
        model.learn(total_steps, callback=evaluations, progress_bar=progress)
    finally:
        vec.close()
    policy = evaluations.policy
    assert policy is not None
    curve, final = evaluations.curve, evaluations.curve[-1]
    result = PPOResult(curve, final["mean_return"], final["returns"], model.num_timesteps,
                       time.perf_counter() - t0, hp.model_dump(), str(out) if out else None, policy)
    if out is not None:
        _save(out, model, policy, result, seed)
    return result


def _save(out: Path, model: PPO, policy: PPOPolicy, result: PPOResult, seed: int) -> None:
    """SB3's zip, and the pickle-free pair :func:`load_ppo_policy` reads."""
    model.save(out / "ppo.zip")
    tensors = {name: t.detach().cpu().contiguous() for name, t in _unaliased(policy.net).items()}
    norm = policy.obs_normalization
    if norm:
        tensors |= {_STATE["mean"]: torch.from_numpy(norm.mean), _STATE["var"]: torch.from_numpy(norm.var)}
    save_file(tensors, out / "policy.safetensors")
    record = {
        "env": policy.env, "observation": policy.observation, "seed": seed, "env_steps": result.env_steps,
        "hyperparameters": result.hyperparameters,
        "obs_normalization": {"clip": norm.clip, "epsilon": norm.epsilon} if norm else None,
        "final_mean_return": result.final_mean_return, "wall_seconds": result.wall_seconds, "curve": result.curve,
    }
    (out / "ppo.json").write_text(json.dumps(record, indent=1) + "\n")


def _aliases(net: torch.nn.Module) -> dict[str, str]:
    """Each state-dict name -> the first name of the same tensor.

    SB3's CNN policies share one feature extractor under three names;
    safetensors stores a shared tensor once, so only first names are saved.
    """
    first: dict[int, str] = {}
    return {name: first.setdefault(t.data_ptr(), name) for name, t in net.state_dict().items()}


def _unaliased(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = net.state_dict()
    return {name: state[name] for name, original in _aliases(net).items() if name == original}


def load_ppo_policy(folder: Path | str, device: str = "cpu") -> PPOPolicy:
    """Rebuild the policy :func:`train_ppo` saved in ``folder``, from safetensors and JSON only."""
    folder = Path(folder)
    try:
        record = json.loads((folder / "ppo.json").read_text())
        tensors = load_file(folder / "policy.safetensors", device=device)
    except (OSError, ValueError, SafetensorError) as exc:
        raise UsageError(f"cannot load a PPO policy from {folder}: {exc}") from exc
    hp = build(PPOHyperparameters, record["hyperparameters"], source=str(folder / "ppo.json"))
    card, variant = get_card(record["env"])
    observation = record.get("observation")
    shaped = training_env(card.make_env(variant, observation=observation), card)
    shaped.close()
    net = PPO.policy_aliases[hp.policy](shaped.observation_space, shaped.action_space, ConstantSchedule(0.0))
    norm = None
    if record["obs_normalization"]:
        stats = {key: tensors.pop(name).cpu().numpy() for key, name in _STATE.items()}
        norm = ObsNormalization(**stats, **record["obs_normalization"])
    try:
        net.load_state_dict({name: tensors[original] for name, original in _aliases(net).items()})
    except (KeyError, RuntimeError) as exc:
        raise UsageError(f"{folder / 'policy.safetensors'} does not fit the {record['env']} policy: {exc}") from exc
    return PPOPolicy(record["env"], net.to(device).eval(), norm, observation, hp.sample_actions)
