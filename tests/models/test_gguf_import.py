"""Importing GGUF files, checked against transformers.

The files are written from random transformers models as llama.cpp writes them (tests/models/gguf_writer.py).
Where transformers can load the GGUF file itself (Llama, Qwen2) it is the reference, running the same
dequantized weights: logits within atol 1e-4 (measured about 3e-6). Where it cannot (it reads no head_dim for
Qwen3 and ignores Gemma 2's soft-caps in GGUF metadata), the file is stored unquantized and the reference is
transformers running the original checkpoint, within the same tolerance.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf_writer import write_gguf
from hf_reference import VOCAB, build_hf_model, hf_logits, rlreason_logits

from rlreason.models.families import UnsupportedModelError
from rlreason.models.gguf_import import import_gguf
from rlreason.models.hf_import import CheckpointError

LOGITS_ATOL = 1e-4
Q = gguf.GGMLQuantizationType

# case -> (quantization, model settings, whether transformers loads the GGUF file as the reference)
GGUF_CASES = {
    "llama_gqa_untied": (Q.Q8_0, {}, True),
    "llama_mha_tied": (Q.Q4_1, {}, True),
    "qwen2_bias_tied": (Q.F16, {}, True),
    "qwen3_qknorm_untied": (Q.F32, {}, False),
    # llama.cpp scales Gemma 2 queries by head_dim ** -0.5 whatever query_pre_attn_scalar was.
    "gemma2_window4": (Q.F32, {"query_pre_attn_scalar": 16}, False),
}


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_gguf_logits_match_transformers(case, tmp_path):
    quantization, overrides, transformers_reads_gguf = GGUF_CASES[case]
    model = build_hf_model(case, **overrides)
    write_gguf(model, tmp_path / "model.gguf", quantization)
    reference = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf",
                                                                   dtype=torch.float32).eval()
                 if transformers_reads_gguf else model)
    params, cfg = import_gguf(tmp_path / "model.gguf")
    tokens = np.random.default_rng(7).integers(0, VOCAB, (2, 20))
    np.testing.assert_allclose(rlreason_logits(params, cfg, tokens), hf_logits(reference, tokens), rtol=0,
                               atol=LOGITS_ATOL)


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    write_gguf(build_hf_model("llama_gqa_untied"), path, Q.Q8_0)
    return path


def test_truncated_gguf_names_the_cut_tensor(llama_gguf, tmp_path):
    reader = gguf.GGUFReader(llama_gguf)
    last = max(reader.tensors, key=lambda tensor: tensor.data_offset)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(llama_gguf.read_bytes()[:last.data_offset + 8])
    with pytest.raises(CheckpointError, match="truncated") as error:
        import_gguf(cut)
    assert repr(last.name) in str(error.value) and str(cut) in str(error.value)


def test_unknown_gguf_architecture_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "mamba.gguf"), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="unknown architecture.*'mamba'"):
        import_gguf(tmp_path / "mamba.gguf")


def test_gguf_rope_scaling_is_refused(tmp_path):
    model = build_hf_model("llama_gqa_untied")
    path = tmp_path / "scaled.gguf"
    write_gguf(model, path, Q.F32,
               extra_metadata=lambda writer: writer.add_rope_scaling_type(gguf.RopeScalingType.YARN))
    with pytest.raises(UnsupportedModelError, match="yarn"):
        import_gguf(path)
