"""The GRPO run the sharded training tests repeat on different meshes and process layouts.

It starts from the session's tiny pretrained model (`tiny_base_model` in tests/conftest.py) on 1-digit addition.
The model rarely writes a well-formed answer yet, so exact_answer would score every completion 0 and leave every
advantage 0; `gsm8k_last_number` (the last number of the completion equals the sum) scores some completions 1,
so group rewards, advantages and gradients are real. A reference model (beta), two optimizer updates per step
(the second off-policy: ratios, clipping) and no warmup (step 1 already moves the params, so step 2 samples from
updated params) make every metric of the step meaningful. Each prompt runs once for the rows of it that a
micro-batch holds (grpo.share_prompt_forward): how many that is depends on the mesh, and the results must not.
"""

from __future__ import annotations

from tiny_run import TINY_OVERRIDES

# The architecture of the tiny base model (a model directory fixes it: other model.* values are refused).
TINY_MODEL = [override for override in TINY_OVERRIDES if override.startswith("model.")]

CONFIG = "configs/demo_cpu.yaml"

# Two runs of these settings that split the work differently (meshes, processes) compute the same function, but
# float32 sums add in another order. The bounds below come from the computation, not from one CPU's results:
#
# Metrics. A sum of n float32 terms computed in two orders differs by at most 2 * n * u relative to the sum of the
# terms' magnitudes (u = 2^-24, Higham's gamma_n). Every metric passes through a chain of such reductions: the
# sum over the B * Tc = 32 * 24 = 768 completion tokens, the log-softmax over the 512-token vocabulary, and per
# layer (two) the MLP contraction (384) and the attention projections' (2 * 128). Their lengths add up to
# 768 + 512 + 2 * (384 + 256) = 2560 terms, so METRIC_RTOL = 2 * 2560 * u = 3.1e-4 relative (the measured
# differences are 100x smaller, a mis-sharded reduction is off by O(1)), and METRIC_ATOL the same for metrics whose
# value is a cancellation near 0 (the loss, as -mean advantage) or a fraction of unit-size per-token terms.
#
# Params. Adam divides each gradient component by its own running magnitude plus eps, so with the usual eps = 1e-8
# float noise in a component that is nearly 0 becomes a full +-lr step (a bound no tolerance can respect: the
# amplification is lr / eps = 1e5). These runs set eps = lr, so the update's sensitivity to its gradient is at most
# lr / eps = 1: two runs' params differ by at most the sum over updates of their gradients' difference, and the
# gradient norm (a metric) agrees within METRIC_RTOL. `param_tolerance` gives that bound from the run's own
# gradient norms (clipped at max_grad_norm = 1).
UNIT_ROUNDOFF = 2.0**-24
REDUCTION_TERMS = 768 + 512 + 2 * (384 + 2 * 128)
METRIC_RTOL = METRIC_ATOL = 2 * REDUCTION_TERMS * UNIT_ROUNDOFF
LEARNING_RATE = 1e-3
UPDATES_PER_STEP = 2  # grpo.num_minibatches below, num_iterations 1


def param_tolerance(grad_norms: list[float]) -> float:
    """Bound on |params_a - params_b| (any element, and the Euclidean norm over all) after the steps whose mean
    per-update gradient norms are `grad_norms` (the step metric `grad_norm`, one per step)."""
    return sum(UPDATES_PER_STEP * METRIC_RTOL * min(norm, 1.0) for norm in grad_norms)


def grpo_settings(model_dir) -> list[str]:
    """Overrides of CONFIG for the run from `model_dir`; the tests add mesh.*, train.batch_size and the like."""
    return [f"train.model_dir={model_dir}", *TINY_MODEL, "task.min_digits=1", "task.max_digits=1", "task.num_train=200",
            "sampling.max_prompt_length=16", "sampling.max_completion_length=24", "grpo.num_generations=4",
            "grpo.rewards=[{name: r1_format, weight: 0.2}, {name: gsm8k_last_number}]",
            "grpo.accuracy_reward=gsm8k_last_number", "grpo.beta=0.04", f"grpo.num_minibatches={UPDATES_PER_STEP}",
            "grpo.optim.warmup_steps=0", f"grpo.optim.learning_rate={LEARNING_RATE}",
            f"grpo.optim.eps={LEARNING_RATE}", "grpo.share_prompt_forward=true"]
