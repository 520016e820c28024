"""Where every array lives: ONE table mapping logical axes to mesh axes, and the shardings derived from it.

The model names the axes of each parameter (`param_specs`: vocab, embed, heads, kv_heads, head_dim, mlp,
layers, norm); batches and KV caches are named here. No other module names a mesh axis.

    logical axis     mesh axes          why
    batch            data, fsdp         rows split over every data-parallel device (FSDP is data parallel too)
    cache_batch      data, fsdp         the KV cache follows its rows
    cache_sequence   -                  every device keeps whole sequences; decoding writes one column a step
    embed            fsdp               FSDP: weights split along the hidden size, gathered per layer on use
    vocab            tensor             Megatron-style tensor parallelism: embedding / logits split by token
    heads, kv_heads  tensor             attention heads split across tensor devices
    mlp              tensor             MLP hidden units split across tensor devices
    head_dim         -                  split heads, not their width: rotary embeddings mix the halves
    layers           -                  the layer scan walks this axis; splitting it would be pipelining
    norm             -                  norm scales are tiny; replicated
    lora_rank        -                  LoRA adapters' rank axis (a few to a few dozen): their other axes split

A mesh axis is dropped from a dimension it does not divide, and the dimension is replicated over it instead:
e.g. 2 KV heads on tensor=4 keeps every K/V head on every tensor device (as Megatron does for grouped-query
attention), while the query heads are still split. A mesh axis is also used at most once per array.

Sampling and the update use this same layout inside one compiled step (phase-1 decision). A separate sampling
layout (tensor-only, replicated over fsdp) would spare the decode loop its per-layer weight all-gathers when
fsdp > 1, but costs a resharded full copy of the weights per step, and it is the same layout whenever fsdp = 1
(the single-host TPU and GPU configs). It is worth adding once a benchmark on an fsdp > 1 mesh shows the
gathers dominating decode time.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping, Sequence

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlreason.config import MeshConfig, ModelConfig
from rlreason.models.transformer import KVCache, Layout, Params, ParamSpec, param_specs

Rules = Mapping[str, tuple[str, ...]]

AXIS_RULES: Rules = types.MappingProxyType({
    "batch": ("data", "fsdp"),
    "cache_batch": ("data", "fsdp"),
    "cache_sequence": (),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "head_dim": (),
    "layers": (),
    "norm": (),
    "lora_rank": (),
})

CACHE_AXES = ("layers", "cache_batch", "kv_heads", "cache_sequence", "head_dim")  # the cache's values
CACHE_KEY_AXES = ("layers", "cache_batch", "kv_heads", "head_dim", "cache_sequence")  # its keys


def _is_param_spec(node) -> bool:
    return isinstance(node, ParamSpec)


def axis_rules(mesh_cfg: MeshConfig) -> Rules:
    """The table with the config's `mesh.rules` overrides applied."""
    return types.MappingProxyType({**AXIS_RULES, **{rule.logical: rule.mesh_axes for rule in mesh_cfg.rules}})


def partition_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   rules: Rules = AXIS_RULES) -> PartitionSpec:
    """The PartitionSpec of an array with logical `axes` and `shape` (see the module doc for dropped axes); an
    axis named None is kept whole."""
    used: set[str] = set()
    entries = []
    for axis, size in zip(axes, shape, strict=True):
        kept = []
        for mesh_axis in rules[axis] if axis is not None else ():
            split = math.prod(mesh.shape[name] for name in kept) * mesh.shape[mesh_axis]
            if mesh_axis not in used and size % split == 0:
                kept.append(mesh_axis)
        used.update(kept)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*entries)


def named_sharding(axes: Sequence[str], shape: Sequence[int], mesh: Mesh, rules: Rules = AXIS_RULES) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(axes, shape, mesh, rules))


def spec_shardings(specs, mesh: Mesh, rules: Rules = AXIS_RULES):
    """A tree of ParamSpec leaves (logical axes and shapes) -> the same tree of NamedShardings."""
    return jax.tree.map(lambda spec: named_sharding(spec.axes, spec.shape, mesh, rules), specs,
                        is_leaf=_is_param_spec)


def param_shardings(model_cfg: ModelConfig, mesh: Mesh, rules: Rules = AXIS_RULES) -> Params:
    """A NamedSharding per parameter leaf, in the params' tree structure."""
    return spec_shardings(param_specs(model_cfg), mesh, rules)


def opt_state_shardings(optimizer: optax.GradientTransformation, model_cfg: ModelConfig, mesh: Mesh,
                        rules: Rules = AXIS_RULES, trained=None):
    """Shardings of `optimizer`'s state: its parameter-shaped parts (e.g. Adam's moments) like the params,
    the rest (step counts) replicated. Compiling `optimizer.init` without them replicates the whole state.
    `trained`: the ParamSpec tree of what the optimizer trains (a LoRA run's adapters); None: the model's params."""
    specs = param_specs(model_cfg) if trained is None else trained
    abstract_params = jax.tree.map(lambda spec: jax.ShapeDtypeStruct(spec.shape, model_cfg.param_dtype), specs,
                                   is_leaf=_is_param_spec)
    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_state,
                                 spec_shardings(specs, mesh, rules), transform_non_params=lambda _: replicated(mesh))


def batch_shards(mesh: Mesh, rules: Rules = AXIS_RULES) -> int:
    """How many blocks a batch's rows are split into: the devices of the `batch` rule's mesh axes."""
    return math.prod(mesh.shape[axis] for axis in rules["batch"])


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = AXIS_RULES) -> NamedSharding:
    """Rows [B, ...] split by the `batch` rule, other dims replicated. B must be divisible by the split."""
    return NamedSharding(mesh, PartitionSpec(rules["batch"] or None, *([None] * (ndim - 1))))


def rows_sharding(mesh: Mesh, shape: Sequence[int], rules: Rules = AXIS_RULES) -> NamedSharding:
    """Rows [B, ...] split by the `batch` rule over the mesh axes B divides (a micro-batch may be too small for
    all of them), other dims replicated."""
    rows = partition_spec(("batch",), shape[:1], mesh, rules)
    return NamedSharding(mesh, PartitionSpec(*rows, *([None] * (len(shape) - 1))))


def put_rows(tree, mesh: Mesh, rules: Rules = AXIS_RULES):
    """Every array of `tree` (numpy or jax, rows first) on `mesh`, its rows split as `rows_sharding` says."""
    return jax.tree.map(lambda leaf: jax.device_put(leaf, rows_sharding(mesh, leaf.shape, rules)), tree)


def model_layout(mesh: Mesh, rules: Rules = AXIS_RULES) -> Layout:
    """Rows (and the model's activations) split like a batch (`rows_sharding`); a weight in use keeps its split
    over the mesh axes that do not split rows (tensor) and is gathered over those that do (fsdp); a kernel the
    compiler cannot split runs on each device's block of its arguments, split by these rules."""
    compute_rules = {logical: tuple(axis for axis in axes if axis not in rules["batch"])
                     for logical, axes in rules.items()}

    def sharded(function: Callable, in_axes: tuple, out_axes: tuple) -> Callable:
        def on_each_device(*args):
            out_shape = jax.eval_shape(function, *args).shape  # a block-wise function: global in, global out
            in_specs = tuple(partition_spec(axes, arg.shape, mesh, rules) for axes, arg in zip(in_axes, args))
            return jax.shard_map(function, mesh=mesh, in_specs=in_specs,
                                 out_specs=partition_spec(out_axes, out_shape, mesh, rules), check_vma=False)(*args)
        return on_each_device

    return Layout(
        rows=lambda tree: jax.tree.map(
            lambda leaf: jax.lax.with_sharding_constraint(leaf, rows_sharding(mesh, leaf.shape, rules)), tree),
        gathered=lambda weight, axes: jax.lax.with_sharding_constraint(
            weight, named_sharding(axes, weight.shape, mesh, compute_rules)),
        sharded=sharded)


def cache_sharding(model_cfg: ModelConfig, mesh: Mesh, batch_size: int, max_length: int,
                   rules: Rules = AXIS_RULES) -> KVCache:
    """Shardings of a KVCache (keys [L, B, K, D, S], values [L, B, K, S, D])."""
    values = (model_cfg.num_layers, batch_size, model_cfg.num_kv_heads, max_length, model_cfg.head_dim)
    keys = (*values[:3], model_cfg.head_dim, max_length)
    return KVCache(named_sharding(CACHE_KEY_AXES, keys, mesh, rules), named_sharding(CACHE_AXES, values, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, rng keys)."""
    return NamedSharding(mesh, PartitionSpec())
