"""The weights injector: value vectors by optimisation, then ROME's or MEMIT's closed-form update."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

from llmrl.engine import Engine
from llmrl.errors import UsageError
from llmrl.folders import one_builder
from llmrl.inject import Edit
from llmrl.inject.weights.finetune import finetune
from llmrl.inject.weights.forwards import (Rows, answer_logp, block_output, cache_rows, frozen, mean_per_item,
                                           next_logp, replay, subject_states)
from llmrl.inject.weights.layout import Layout, find_layout, resolve_layers
from llmrl.inject.weights.prompts import SubjectPrompt, make_prompt, subject_position
from llmrl.inject.weights.statistics import (Corpus, model_key, read_tensors, sample_corpus, second_moments,
                                             write_tensors)
from llmrl.knowledge import KnowledgeItem, spread
from llmrl.models import cache_dir
from llmrl.policy import LLMPolicy

METHODS = ("rome", "memit", "ft-l")


#: MEMIT's λ per edited item (see WeightsInjector).
MOM2_WEIGHT_PER_ITEM = 500.0


@dataclass
class _Plan:
    """One item's prompts: examples for the key average, a subset for the value, one essence prompt."""

    item: KnowledgeItem
    #: The policy (one per card on a model) and situation: an item's later edit supersedes its earlier one.
    owner: tuple[int, str]
    values: list[SubjectPrompt]
    extra_keys: list[SubjectPrompt]
    essence: SubjectPrompt


@dataclass
class WeightsInjector:
    """Knowledge written into MLP down projections by ROME or MEMIT; every edit is exactly undoable.

    ``layers``: block indices (ints; negative count from the end) or fractions
    of depth (floats); None takes :data:`DEFAULT_LAYERS` for the method. MEMIT
    optimises the value at its last layer and spreads the update over all;
    ROME edits one layer and applies the items one after another.

    The value vector: at most ``steps`` Adam steps at ``lr`` on the answer's
    negative log-likelihood over ``value_examples`` example prompts per item,
    stopping once every item's is below ``stop_nll``; plus ``kl_factor`` times
    the KL divergence of the next-token distribution after the ``essence``
    sentence, plus ``weight_decay`` times (‖δ‖ / ‖h‖)², with ‖δ‖ clamped to
    ``clamp`` times the residual norm ‖h‖ at the subject. Keys average
    ``key_examples`` example prompts per item.

    Statistics: ``stats_tokens`` sampled tokens (seeded by ``stats_seed``)
    plus up to ``stats_prompts`` decision prompts of the items' examples and
    ``corpus_texts``. They are computed once per model and layer and cached
    under ``cache_dir()/stats/<model key>``; the corpus is built by the first
    edit that needs it, from its items, so a cache filled by another run gives
    other statistics. ``save_dir`` keeps a copy of the corpus an edit's
    statistics came from, and ``corpus`` (such a copy) computes them from it
    instead, which is how a replay gets the statistics its run had.

    MEMIT weighs the statistics by λ = ``mom2_weight_per_item`` times the
    number of items: its least squares sums over the items, so a fixed λ
    (MEMIT's 15,000) makes an edit of a few items too weak to land and one of
    many items too strong.

    ``null_space`` (MEMIT only) is AlphaEdit's update (Fang et al., ICLR 2025)
    for sequential editing: instead of weighing the statistics against the new
    keys, the update is projected onto the null space of the preserved keys
    (eigenvectors of C whose eigenvalue is below ``null_space_rtol`` times the
    largest; AlphaEdit's threshold is absolute), so the outputs for those keys
    do not move, and it also fits the keys of this injector's earlier edits
    still in force, so that a later edit leaves them in place;
    ``null_space_l2`` is the ridge term: 10, as in the authors' released settings
    for every model they edit; at 1.0 a 100-item batch moved unrelated prompts
    (KL 0.21 against 0.04 on SmolLM2-135M, reports/edits/NOTES.md). Undoing an
    edit forgets its keys.

    ``method: ft-l`` is constrained fine-tuning instead (:mod:`.finetune`): no
    keys, values or statistics; ``ft_passes`` passes of Adam at ``ft_lr`` over
    the items' example prompts, ``ft_batch`` per step, on the one layer of
    ``layers`` (default: ROME's), every weight kept within ``ft_bound`` of its
    value, at most ``ft_max_steps`` steps (passes grow with the items: 25
    passes over a thousand items' prompts would be 4,000 steps); it stops once
    every row's NLL is below ``stop_nll``. The bound is 5e-2: at 5e-4 no item's
    choice moved on SmolLM2-135M, in bf16 or float32 (reports/edits/NOTES.md).
    """

    name: ClassVar[str] = "weights"
    edits_parameters: ClassVar[bool] = True

    method: str = "memit"
    layers: Sequence[int | float] | None = None
    steps: int = 12
    lr: float = 1.0
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp: float = 0.75
    stop_nll: float = 0.05
    key_examples: int = 2
    value_examples: int = 1
    mom2_weight_per_item: float = MOM2_WEIGHT_PER_ITEM
    stats_tokens: int = 20000
    stats_prompts: int = 64
    stats_seed: int = 0
    corpus_texts: Sequence[str] = ()
    essence: str = "When {}, this means"
    corpus: Path | str | None = None
    save_dir: Path | str | None = None
    null_space: bool = False
    null_space_rtol: float = 1e-2
    null_space_l2: float = 10.0
    ft_passes: int = 25
    ft_lr: float = 5e-4
    ft_bound: float = 5e-2
    ft_batch: int = 8
    ft_max_steps: int = 500

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"bad weights method {self.method!r}; choose one of {', '.join(METHODS)}")
        if min(self.steps, self.key_examples, self.value_examples, self.stats_prompts) < 1:
            raise UsageError("steps, key_examples, value_examples and stats_prompts must be >= 1")
        if min(self.lr, self.clamp, self.mom2_weight_per_item) <= 0 or min(self.kl_factor, self.weight_decay) < 0:
            raise UsageError("lr, clamp and mom2_weight_per_item must be > 0; kl_factor and weight_decay >= 0")
        if self.essence.count("{}") != 1:
            raise UsageError(f"essence template {self.essence!r} needs exactly one {{}} for the situation")
        if self.null_space and self.method != "memit":
            raise UsageError("null_space projects MEMIT's update; use method: memit")
        if min(self.ft_passes, self.ft_batch, self.ft_max_steps) < 1 or min(self.ft_lr, self.ft_bound) <= 0:
            raise UsageError("ft_passes, ft_batch and ft_max_steps must be >= 1, ft_lr and ft_bound > 0")
        if not 0 < self.null_space_rtol < 1 or self.null_space_l2 <= 0:
            raise UsageError("0 < null_space_rtol < 1 and null_space_l2 > 0 are required")
        #: Per layer, the key of each (policy, situation) whose latest edit is in force, and the null-space
        #: projector (null_space only).
        self._edited: dict[int, dict[tuple[int, str], torch.Tensor]] = {}
        self._projectors: dict[int, torch.Tensor] = {}

    def inject(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Edit:
        """Edit ``policy.lm.model`` in place so that each item's action wins in its situation."""
        return self.inject_jointly([(policy, items)])

    def inject_jointly(self, pairs: list[tuple[LLMPolicy, list[KnowledgeItem]]]) -> Edit:
        """One edit of several policies' items, the policies on one model (one per card of a stream): each
        item's prompts are its own policy's, and MEMIT solves for all of them at once."""
        t0 = time.perf_counter()
        policy, policies = pairs[0][0], list({id(p): p for p, _ in pairs}.values())
        if any(p.lm.model is not policy.lm.model for p in policies):
            raise UsageError("a joint edit needs every policy on the same model")
        model = policy.lm.model
        layout = find_layout(model)
        layers = resolve_layers(self.layers, len(layout.blocks), self.method)
        items = [item for _, its in pairs for item in its]
        if not items:
            raise UsageError("no knowledge items to inject")
        if self.method == "ft-l":
            for p, its in pairs:
                for item in its:
                    self._check(p, item)
            plans, moments, stats, stats_seconds = [], {}, {}, 0.0
        else:
            plans = [self._plan(p, item) for p, its in pairs for item in its]
            t1 = time.perf_counter()
            moments, stats = self.statistics(policy, layout, layers, pairs[0][1])
            stats_seconds = time.perf_counter() - t1
        originals = {layer: layout.projections[layer].weight.detach().clone() for layer in layers}
        edited_before = {layer: dict(keys) for layer, keys in self._edited.items()}

        def invalidate() -> None:
            for p in policies:
                p.invalidate()

        def restore() -> None:
            with torch.no_grad():
                for layer, weight in originals.items():
                    layout.projections[layer].weight.copy_(weight)
            self._edited = edited_before  # edits are undone newest first, so this is the state before this one
            invalidate()

        engine = Engine(model, policy.lm.tokenizer.pad_token_id)
        try:
            with frozen(model):
                if self.method == "ft-l":
                    report = finetune(engine, layout, layers[0], pairs, self.ft_passes, self.ft_lr, self.ft_bound,
                                      self.ft_batch, self.stop_nll, self.stats_seed, self.ft_max_steps)
                else:
                    edit = self._rome if self.method == "rome" else self._memit
                    report = edit(engine, layout, layers, plans, moments)
        except BaseException:
            restore()
            raise
        invalidate()
        touched = sum(int((layout.projections[layer].weight != w).sum()) for layer, w in originals.items())
        seconds = time.perf_counter() - t0
        info = {"method": self.method, "layers": layers, "items": report, "stats_seconds": stats_seconds,
                "edit_seconds": seconds - stats_seconds, **stats}
        return Edit(self.name, list(items), seconds, touched, restore, info)

    # -- preparing prompts ---------------------------------------------------------------------

    @staticmethod
    def _check(policy: LLMPolicy, item: KnowledgeItem) -> None:
        if item.action not in policy.action_words:
            raise UsageError(f"item action {item.action!r} is not one of {policy.action_words}")
        if not item.examples:
            raise UsageError(f"item for {item.situation!r} has no example observations to edit on")

    def _plan(self, policy: LLMPolicy, item: KnowledgeItem) -> _Plan:
        self._check(policy, item)
        tok = policy.lm.tokenizer
        keys = spread(list(dict.fromkeys(item.examples)), self.key_examples)
        values = spread(keys, self.value_examples)
        answer = policy.answer_text(item.action)

        def prompt(text: str) -> SubjectPrompt:
            return make_prompt(tok, policy.decision_prompt(text), item.situation, answer)

        return _Plan(item, (id(policy), item.situation), [prompt(t) for t in values],
                     [prompt(t) for t in keys if t not in values],
                     make_prompt(tok, self.essence.format(item.situation), item.situation, None))

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self, policy: LLMPolicy, layout: Layout, layers: list[int],
                   items: list[KnowledgeItem]) -> tuple[dict[int, torch.Tensor], dict]:
        """C = E[k kᵀ] per layer: from the cache, else from the cached corpus, else from a new one."""
        if self.corpus is not None:
            given = Path(self.corpus)
            if not given.is_file():
                raise UsageError(f"statistics corpus {given} does not exist")
            recipe = f"corpus-file-{hashlib.sha256(given.read_bytes()).hexdigest()[:16]}"
        else:
            recipe = f"corpus-{self.stats_tokens}-seed{self.stats_seed}"
        folder = cache_dir() / "stats" / model_key(policy.lm, layout) / recipe
        corpus_path = folder / "corpus.safetensors"
        if self.corpus is not None and not corpus_path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.corpus, corpus_path)
        paths = {layer: folder / f"layer-{layer:03d}.safetensors" for layer in layers}
        cached = True
        if not all(p.exists() for p in paths.values()):
            # workers of one grid that start together: one samples the corpus and counts, the others wait
            with one_builder(folder):
                cached = not self._count_missing(policy, layout, items, corpus_path, paths)
        moments = {layer: read_tensors(p)["mom2"] for layer, p in paths.items()}
        if self.save_dir is not None and corpus_path.exists():
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus_path, Path(self.save_dir) / "corpus.safetensors")
        return moments, {"stats_cached": cached, "stats_dir": str(folder)}

    def _count_missing(self, policy: LLMPolicy, layout: Layout, items: list[KnowledgeItem], corpus_path: Path,
                       paths: dict[int, Path]) -> bool:
        """Write the statistics of the layers in ``paths`` not cached yet, from the cached corpus or a new one;
        whether there were any."""
        missing = [layer for layer, p in paths.items() if not p.exists()]
        if not missing:
            return False
        with frozen(policy.lm.model):
            if corpus_path.exists():
                corpus = Corpus.load(corpus_path)
            else:
                sampled = sample_corpus(policy.lm, self.stats_tokens, self.stats_seed)
                corpus = self._env_corpus(policy, items) + Corpus(sampled, [[] for _ in sampled])
                corpus.save(corpus_path)
            engine = Engine(policy.lm.model, policy.lm.tokenizer.pad_token_id)
            fresh, count = second_moments(engine, layout, missing, corpus)
        for layer, mom2 in fresh.items():
            write_tensors(paths[layer], {"mom2": mom2}, {"tokens": str(count)})
        return True

    def _env_corpus(self, policy: LLMPolicy, items: list[KnowledgeItem]) -> Corpus:
        """Decision prompts of the items' examples (subject positions skipped) plus ``corpus_texts``."""
        tok = policy.lm.tokenizer
        sequences, skip = [], []
        per_item = max(1, self.stats_prompts // len(items))
        for item in items:
            for text in spread(list(dict.fromkeys(item.examples)), per_item):
                ids, index = subject_position(tok, policy.decision_prompt(text), item.situation)
                sequences.append(ids)
                skip.append([index])
        for text in self.corpus_texts:
            sequences.append(tok(text, add_special_tokens=False).input_ids[:512])
            skip.append([])
        return Corpus(sequences, skip)

    # -- keys, values and the closed-form updates ----------------------------------------------

    def _encode_plans(self, engine: Engine, layout: Layout, plans: list[_Plan], top: int
                      ) -> tuple[Rows, Rows | None, Rows]:
        """Cached rows: value prompts (full depth), the other key prompts (up to block ``top``), essences."""
        def owned(get: Callable[[_Plan], list[SubjectPrompt]]) -> tuple[list[SubjectPrompt], list[int]]:
            pairs = [(p, i) for i, plan in enumerate(plans) for p in get(plan)]
            return [p for p, _ in pairs], [i for _, i in pairs]

        values = cache_rows(engine, *owned(lambda plan: plan.values))
        extra_prompts, extra_owner = owned(lambda plan: plan.extra_keys)
        extra = cache_rows(engine, extra_prompts, extra_owner, stop=layout.blocks[top]) if extra_prompts else None
        essence = cache_rows(engine, *owned(lambda plan: [plan.essence]))
        return values, extra, essence

    def _keys(self, engine: Engine, layout: Layout, groups: list[Rows], layer: int, top: int,
              n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per item: mean key at ``layer`` and mean residual after block ``top``, at the subject."""
        keys, residuals = zip(*(subject_states(engine, layout, rows, layer, top) for rows in groups))
        owner = torch.cat([rows.owner for rows in groups])
        return mean_per_item(torch.cat(keys), owner, n), mean_per_item(torch.cat(residuals), owner, n)

    def _optimise(self, engine: Engine, layout: Layout, layer: int, values: Rows, essence: Rows,
                  norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item residual shifts δ at the subject after block ``layer``, and the answer log-prob before.

        δ shifts the residual stream, as adding it to the down projection's
        output would. Blocks up to ``layer`` do the same work on the live tokens
        at every step, so their output is recorded once and replayed.
        """
        n = len(norms)
        limit = (self.clamp * norms).float()
        delta = torch.zeros((n, layout.hidden_size), requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        recorded = {id(rows): block_output(engine, layout.blocks[layer], rows) for rows in (values, essence)}

        def shifted(rows: Rows) -> torch.Tensor:
            out = recorded[id(rows)]
            add = torch.zeros_like(out)
            add[:, 0] = delta[rows.owner].to(out)
            return out + add

        before = init = None
        with torch.enable_grad():
            for step in range(self.steps):
                with replay(layout.blocks[:layer + 1], shifted(values)):
                    logp = mean_per_item(answer_logp(engine, values), values.owner, n)
                with replay(layout.blocks[:layer + 1], shifted(essence)):
                    now = next_logp(engine, essence)
                if step == 0:
                    before, init = logp.detach(), now.detach()
                if bool((-logp < self.stop_nll).all()):
                    break
                kl = mean_per_item((init.exp() * (init - now)).sum(-1), essence.owner, n)
                decay = (delta.norm(dim=1) / norms.float()) ** 2
                loss = (-logp + self.kl_factor * kl + self.weight_decay * decay).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.mul_((limit / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)[:, None])
        return delta.detach().double(), before

    def _after(self, engine: Engine, values: Rows, n: int) -> torch.Tensor:
        """Answer log-prob per item under the edited weights, the prompts re-encoded from scratch
        (the edit also changes the context before the subject, so the old cache would mislead)."""
        with torch.no_grad():
            fresh = cache_rows(engine, values.prompts, values.owner.tolist())
            return mean_per_item(answer_logp(engine, fresh), fresh.owner, n)

    def _report(self, plans: list[_Plan], before: torch.Tensor, after: torch.Tensor,
                delta: torch.Tensor) -> list[dict]:
        return [{"situation": plan.item.situation, "action": plan.item.action, "logp_before": float(b),
                 "logp_after": float(a), "delta_norm": float(d.norm())}
                for plan, b, a, d in zip(plans, before, after, delta)]

    def _rome(self, engine: Engine, layout: Layout, layers: list[int], plans: list[_Plan],
              moments: dict[int, torch.Tensor]) -> list[dict]:
        """One rank-one update per item, in order: ΔW = δ (C⁻¹k)ᵀ / (kᵀ C⁻¹ k), so that ΔW k = δ."""
        layer, report = layers[0], []
        c = moments[layer].double()
        for plan in plans:
            values, extra, essence = self._encode_plans(engine, layout, [plan], layer)
            k, z = self._keys(engine, layout, [values] + ([extra] if extra else []), layer, layer, 1)
            delta, before = self._optimise(engine, layout, layer, values, essence, z.norm(dim=1))
            u = torch.linalg.solve(c, k[0])
            layout.add(layer, torch.outer(delta[0], u) / (k[0] @ u))
            report += self._report([plan], before, self._after(engine, values, 1), delta)
        return report

    def _memit(self, engine: Engine, layout: Layout, layers: list[int], plans: list[_Plan],
               moments: dict[int, torch.Tensor]) -> list[dict]:
        """MEMIT: shift the residual after the last layer by δ, then per layer l (in order)
        ΔW_l = R Kᵀ (λ C + K Kᵀ)⁻¹ with R the remaining shift divided by the layers left.

        After each layer's update the subject token is re-run to refresh keys and
        residuals; the context before the subject keeps its pre-edit KV cache,
        which the update, fitted to leave other keys alone, barely changes.
        """
        n, top = len(plans), layers[-1]
        values, extra, essence = self._encode_plans(engine, layout, plans, top)
        groups = [values] + ([extra] if extra else [])
        k, z0 = self._keys(engine, layout, groups, layers[0], top, n)
        delta, before = self._optimise(engine, layout, top, values, essence, z0.norm(dim=1))
        for j, layer in enumerate(layers):
            k, z = (k, z0) if j == 0 else self._keys(engine, layout, groups, layer, top, n)
            resid = (z0 + delta - z) / (len(layers) - j)
            if self.null_space:
                layout.add(layer, self._projected(layer, moments[layer], k, resid, [p.owner for p in plans]))
                continue
            a = self.mom2_weight_per_item * n * moments[layer].double() + k.T @ k
            layout.add(layer, resid.T @ torch.linalg.solve(a, k.T).T)
        return self._report(plans, before, self._after(engine, values, n), delta)

    def _projected(self, layer: int, moments: torch.Tensor, k: torch.Tensor, resid: torch.Tensor,
                   owners: list[tuple[int, str]]) -> torch.Tensor:
        """AlphaEdit's update ΔW = xᵀ, x = (P (KᵀK + Σ_p) + l2 I)⁻¹ P Kᵀ R, with P the projector onto the null
        space of the preserved keys' C and Σ_p the keys of the earlier edits in force; x lies in P's range
        (l2 x equals P times something), so ΔW leaves every key in C's kept directions where it was.

        An item edited again (its situation's action changed) leaves Σ_p: kept, its old key would hold the
        old answer against the new edit of the same key."""
        c = moments.double()
        p = self._projectors.get(layer)
        if p is None:  # C is the same for every edit of this injector (statistics are per model and layer)
            values, vectors = torch.linalg.eigh(c)
            null = vectors[:, values < self.null_space_rtol * values.max()]
            p = self._projectors[layer] = null @ null.T
        k = k.double()
        kept = self._edited.setdefault(layer, {})
        for owner in owners:
            kept.pop(owner, None)
        earlier = sum((torch.outer(row, row) for row in kept.values()), torch.zeros_like(c))
        a = p @ (k.T @ k + earlier) + self.null_space_l2 * torch.eye(len(c), dtype=c.dtype, device=c.device)
        x = torch.linalg.solve(a, p @ k.T @ resid.double())
        kept.update(zip(owners, k))
        return x.T
