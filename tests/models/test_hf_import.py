"""Importing Hugging Face checkpoints, checked against transformers running the same checkpoint.

Tolerance: float32 logits within atol 1e-4 of transformers' (measured max |diff| about 1e-5 here, with logits of
order 1-10), and greedy decoding of 32 tokens from left-padded prompts identical token for token. Gradients of a
next-token cross-entropy against torch's autograd of the same model: each tensor within 1e-4 of its largest
entry (float32 sums in another order; measured at most 6.4e-6 of it, AMD EPYC).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from gguf_writer import write_gguf
from hf_reference import (FAMILY_CASES, VOCAB, build_hf_model, hf_greedy, hf_logits, left_pad, rlreason_greedy,
                          rlreason_logits)
from safetensors.numpy import load_file, save_file

from rlreason.models.families import UnsupportedModelError
from rlreason.models.hf_export import save_hf
from rlreason.models.hf_import import CheckpointError, import_hf
from rlreason.models.transformer import forward, positions_from_mask

LOGITS_ATOL = 1e-4
GRADIENT_RTOL_OF_MAX = 1e-4


@pytest.fixture(scope="module", params=list(FAMILY_CASES))
def imported(request, tmp_path_factory):
    """(transformers model, rlreason params, ModelConfig) of one random checkpoint per family case."""
    model = build_hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    params, cfg = import_hf(directory)
    return model, params, cfg


def test_logits_match_transformers(imported):
    model, params, cfg = imported
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 20))
    reference = hf_logits(model, tokens)
    np.testing.assert_allclose(rlreason_logits(params, cfg, tokens), reference, rtol=0, atol=LOGITS_ATOL)


def test_greedy_generation_matches_transformers(imported):
    model, params, cfg = imported
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, VOCAB, 5).tolist(), rng.integers(1, VOCAB, 11).tolist()]
    tokens, mask = left_pad(prompts, pad_id=0)
    np.testing.assert_array_equal(rlreason_greedy(params, cfg, tokens, mask, 32), hf_greedy(model, tokens, mask, 32))


def test_gradients_match_torch_autograd(imported, tmp_path):
    """The backward pass (the projections' and the gated MLP's hand-written gradients included) against torch's
    autograd of transformers' model: the gradient tree, written with the export's names and layouts, per tensor."""
    model, params, cfg = imported
    tokens = np.random.default_rng(3).integers(0, VOCAB, (2, 20))

    def cross_entropy(params):
        mask = jnp.ones(tokens.shape, bool)
        logits = forward(params, jnp.asarray(tokens), positions_from_mask(mask), mask, cfg)[0]
        logprobs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logprobs, jnp.asarray(tokens[:, 1:, None]), axis=-1))

    save_hf(jax.grad(cross_entropy)(params), cfg, tmp_path)
    ours = load_file(tmp_path / "model.safetensors")
    model.zero_grad()
    logprobs = torch.log_softmax(model(torch.tensor(tokens)).logits[:, :-1], dim=-1)
    (-logprobs.gather(-1, torch.tensor(tokens[:, 1:, None])).mean()).backward()
    reference = {name: parameter.grad.numpy() for name, parameter in model.named_parameters()}
    assert set(ours) == set(reference)
    for name, want in reference.items():
        np.testing.assert_allclose(ours[name], want, rtol=0, atol=GRADIENT_RTOL_OF_MAX * np.abs(want).max(),
                                   err_msg=name)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A saved random Llama checkpoint (one safetensors file)."""
    directory = tmp_path_factory.mktemp("llama")
    build_hf_model("llama_gqa_untied").save_pretrained(directory)
    return directory


def _edited_copy(source: Path, target: Path, edit) -> Path:
    """A copy of the checkpoint folder whose tensors went through `edit(dict) -> dict`."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    save_file(edit(tensors), target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_sharded_checkpoint_with_index_imports_like_a_single_file(llama_dir, tmp_path):
    model = build_hf_model("llama_gqa_untied")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    sharded, _ = import_hf(tmp_path)
    single, _ = import_hf(llama_dir)
    for sharded_leaf, single_leaf in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(sharded_leaf), np.asarray(single_leaf))


def test_sharded_load_reads_only_each_devices_block(llama_dir, tmp_path):
    write_gguf(build_hf_model("llama_gqa_untied"), tmp_path / "model.gguf", gguf.GGMLQuantizationType.Q8_0)
    script = Path(__file__).parent / "scripts" / "sharded_import.py"
    result = subprocess.run([sys.executable, str(script), str(llama_dir), str(tmp_path / "model.gguf")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "sharded import ok" in result.stdout, result.stderr[-3000:]


def test_truncated_file_names_the_cut_tensor(llama_dir, tmp_path):
    shutil.copytree(llama_dir, tmp_path / "cut")
    path = tmp_path / "cut" / "model.safetensors"
    data = path.read_bytes()
    header_length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_length])
    last_name = max((name for name in header if name != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated") as error:
        import_hf(tmp_path / "cut")
    assert last_name in str(error.value) and str(path) in str(error.value)


# problem -> (tensor, edit of the tensor dict, what the error must say besides the tensor's name)
CORRUPTIONS = {
    "wrong_shape": ("model.layers.1.self_attn.k_proj.weight",
                    lambda tensors, name: {**tensors, name: np.zeros((16, 64), np.float32)},
                    ["has shape (16, 64)", "expects (32, 64)"]),
    "missing": ("model.layers.2.mlp.up_proj.weight",
                lambda tensors, name: {key: value for key, value in tensors.items() if key != name},
                ["missing", "expected shape (128, 64)"]),
    "integer_dtype": ("model.norm.weight", lambda tensors, name: {**tensors, name: np.ones(64, np.int32)},
                      ["dtype I32"]),
    "unexpected": ("model.layers.0.self_attn.o_proj.bias",
                   lambda tensors, name: {**tensors, name: np.zeros(64, np.float32)}, ["no place"]),
}


@pytest.mark.parametrize("problem", list(CORRUPTIONS))
def test_bad_tensor_is_named_with_the_problem(problem, llama_dir, tmp_path):
    name, edit, fragments = CORRUPTIONS[problem]
    directory = _edited_copy(llama_dir, tmp_path / "bad", lambda tensors: edit(tensors, name))
    with pytest.raises(CheckpointError) as error:
        import_hf(directory)
    for fragment in [repr(name), *fragments]:
        assert fragment in str(error.value)


def _with_config(source: Path, target: Path, **changes) -> Path:
    """A copy of the checkpoint folder with `changes` made to its config.json."""
    shutil.copytree(source, target)
    config_path = target / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **changes}))
    return target


def test_unknown_architecture_is_named(llama_dir, tmp_path):
    directory = _with_config(llama_dir, tmp_path / "mamba", model_type="mamba", architectures=["MambaForCausalLM"])
    with pytest.raises(UnsupportedModelError, match="unknown architecture.*'mamba'.*supported model types: llama"):
        import_hf(directory)


def test_rope_scaling_is_refused(llama_dir, tmp_path):
    directory = _with_config(llama_dir, tmp_path / "scaled",
                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0})
    with pytest.raises(UnsupportedModelError, match="llama3"):
        import_hf(directory)


def test_bfloat16_checkpoint_imports_bit_exactly(tmp_path):
    model = build_hf_model("qwen2_bias_tied").to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    params, cfg = import_hf(tmp_path, param_dtype="bfloat16")
    assert params["layers"]["q_proj"].dtype == jnp.bfloat16 and cfg.dtype == "bfloat16"
    attention = model.model.layers[3].self_attn
    # [E, H, D] back to torch's [H * D, E]
    q_proj = np.asarray(params["layers"]["q_proj"][3], np.float32).reshape(cfg.hidden_size, -1).T
    np.testing.assert_array_equal(q_proj, attention.q_proj.weight.detach().float().numpy())
    np.testing.assert_array_equal(np.asarray(params["layers"]["k_bias"][3], np.float32).reshape(-1),
                                  attention.k_proj.bias.detach().float().numpy())
