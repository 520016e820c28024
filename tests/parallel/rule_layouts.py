"""What the rule table says for each parameter, written out by hand as the tests' independent reference.

embed -> fsdp; vocab, heads, kv_heads, mlp -> tensor; layers, head_dim, norm replicated. One list entry per
dimension of the leaf (named by its jax.tree_util.keystr path); None: that dimension is not split.
"""

EXPECTED_SPECS = {
    "['embed']": ["tensor", "fsdp"],
    "['lm_head']": ["fsdp", "tensor"],
    "['final_norm']": [None],
    "['layers']['attn_norm']": [None, None],
    "['layers']['q_proj']": [None, "fsdp", "tensor", None],
    "['layers']['k_proj']": [None, "fsdp", "tensor", None],
    "['layers']['v_proj']": [None, "fsdp", "tensor", None],
    "['layers']['o_proj']": [None, "tensor", None, "fsdp"],
    "['layers']['q_bias']": [None, "tensor", None],
    "['layers']['k_bias']": [None, "tensor", None],
    "['layers']['v_bias']": [None, "tensor", None],
    "['layers']['mlp_norm']": [None, None],
    "['layers']['gate_proj']": [None, "fsdp", "tensor"],
    "['layers']['up_proj']": [None, "fsdp", "tensor"],
    "['layers']['down_proj']": [None, "tensor", "fsdp"],
}
# On tensor=4 a model's 2 KV heads cannot be split: K/V projections and biases replicate that dim.
KV_REPLICATED = {"['layers']['k_proj']": [None, "fsdp", None, None], "['layers']['v_proj']": [None, "fsdp", None, None],
                 "['layers']['k_bias']": [None, None, None], "['layers']['v_bias']": [None, None, None]}


def expected_specs(tensor: int, num_kv_heads: int) -> dict[str, list]:
    """The table for a mesh with `tensor` devices on the tensor axis and a model with `num_kv_heads` KV heads."""
    return {**EXPECTED_SPECS, **(KV_REPLICATED if num_kv_heads % tensor else {})}
