"""Decision prompts split at the subject: the situation phrase whose last token carries the key."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llmrl.errors import UsageError


def subject_position(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token of the last occurrence of ``subject``.

    The last occurrence, because the observation (and with it the situation)
    comes after anything the prompt's instructions may say about it.
    """
    start = text.rfind(subject) if subject else -1
    if start < 0:
        raise UsageError(f"subject {subject!r} does not occur in the prompt {text[-200:]!r}")
    if not tokenizer.is_fast:
        raise UsageError("the weights strategy needs a fast tokenizer (it reads the offsets mapping)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last = start + len(subject) - 1
    covering = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a <= last < b]
    return list(enc["input_ids"]), covering[-1]


@dataclass(frozen=True)
class SubjectPrompt:
    """A prompt split at the subject, with the answer whose tokens it should predict."""

    #: The prompt's tokens, then the answer's tokens but the last (teacher forcing).
    ids: list[int]
    #: Index of the subject's last token.
    subject: int
    #: Answer tokens; empty for an essence prompt, where the next-token distribution is what counts.
    answer: tuple[int, ...]

    @property
    def first(self) -> int:
        """Column, counted from the subject, whose logits predict the first answer token (or the next token)."""
        return len(self.ids) - max(len(self.answer), 1) - self.subject


def make_prompt(tokenizer: PreTrainedTokenizerBase, text: str, subject: str, answer: str | None) -> SubjectPrompt:
    ids, index = subject_position(tokenizer, text, subject)
    if index == 0:
        raise UsageError(f"subject {subject!r} starts the prompt; it needs at least one token before it")
    answer_ids = tuple(tokenizer(answer, add_special_tokens=False).input_ids) if answer is not None else ()
    return SubjectPrompt(ids + list(answer_ids[:-1]), index, answer_ids)
