"""Which finished runs a grid keeps when it is run again.

A run counts as done when its record holds the same configuration (read with
today's defaults for options added since) and card version. ``dtype: auto``
is named per run where runs go to the CPU (``bfloat16`` on a CPU with native
bf16, ``float32`` on one without), so a grid resumed on another kind of CPU
would see every finished record as another run and do it all again, over the
records it had: that case is refused with the two ways on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from llmrl.config import LoopConfig
from llmrl.errors import UsageError
from llmrl.record import record_path

if TYPE_CHECKING:
    from llmrl.ablate import RunSpec


def status(results: Path, spec: RunSpec) -> str:
    """``ok``, ``failed`` or ``todo`` (no record, or a record of another configuration or card version)."""
    record = _record(results, spec)
    if record is None:
        return "todo"
    # Records from before card versions existed were written with version 1.
    if not _same(spec)(record.get("config"), spec.config) or record.get("card_version", 1) != spec.card_version:
        return "todo"
    return record.get("status", "todo")


def refuse_auto_redo(dtype: str, results: Path, specs: list[RunSpec]) -> None:
    """With ``dtype: auto``, stop when finished records differ from this machine's runs by the dtype alone."""
    if dtype != "auto":
        return  # a dtype named in the config is the user's choice, redoing included
    for spec in specs:
        record = _record(results, spec)
        recorded = record.get("config") if record else None
        wanted = spec.config.get("dtype")
        if not isinstance(recorded, dict) or recorded.get("dtype") in (None, wanted):
            continue
        if record.get("status") == "ok" and _same(spec)({**recorded, "dtype": wanted}, spec.config):
            raise UsageError(
                f"the finished runs in {results} (such as {spec.run_id}) ran in {recorded['dtype']}, which dtype "
                f"auto chose on their machine; here it means {wanted}, so they would all run again: add --set "
                f"dtype={recorded['dtype']} to go on as they ran, or --set dtype={wanted} to redo them")


def _record(results: Path, spec: RunSpec) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(results, spec.run_id).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _same(spec: RunSpec) -> Callable[[dict | None, dict[str, Any]], bool]:
    return _same_stream if spec.stream else (lambda a, b: a == b) if spec.capacity else _same_config


def _same_config(recorded: dict | None, wanted: dict[str, Any]) -> bool:
    """Equal, or equal but for loop options added since the record was written and left at their defaults.

    A new loop option's default keeps the behaviour from before it existed, so
    runs finished without it stay valid and a long grid survives the addition.
    """
    if recorded is None or set(recorded) - set(wanted):
        return False
    fields = LoopConfig.model_fields
    return all(recorded[k] == v if k in recorded else (k in fields and v == fields[k].default)
               for k, v in wanted.items())


def _same_stream(recorded: dict | None, wanted: dict[str, Any]) -> bool:
    """The recorded stream config, read with today's StreamConfig (options added since take their defaults,
    which keep the behaviour from before they existed), equals the wanted one."""
    from pydantic import ValidationError

    from llmrl.continual.stream import StreamConfig

    try:
        return recorded is not None and StreamConfig(**recorded).model_dump(mode="json") == wanted
    except ValidationError:
        return False
