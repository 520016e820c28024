"""The GRPO run the sharded training tests repeat on different meshes and process layouts.

It starts from the session's tiny pretrained model (`tiny_base_model` in tests/conftest.py) on 1-digit addition.
The model rarely writes a well-formed answer yet, so exact_answer would score every completion 0 and leave every
advantage 0; `gsm8k_last_number` (the last number of the completion equals the sum) scores some completions 1,
so group rewards, advantages and gradients are real. A reference model (beta), two optimizer updates per step
(the second off-policy: ratios, clipping) and no warmup (step 1 already moves the params, so step 2 samples from
updated params) make every metric of the step meaningful.
"""

from __future__ import annotations

CONFIG = "configs/demo_cpu.yaml"

# Two runs of these settings that split the work differently agree within these (float32: sharded matmuls and
# reductions add in another order). Metrics: relative + absolute. Params, per element: Adam divides each gradient
# component by its own running magnitude, so float noise in a component that is nearly 0 moves that param by a
# visible fraction of the learning rate (1e-3; updates reach 2e-3 per element and step).
METRIC_RTOL, METRIC_ATOL = 5e-5, 2e-6
PARAM_ATOL = 5e-5


def grpo_settings(model_dir) -> list[str]:
    """Overrides of CONFIG for the run from `model_dir`; the tests add mesh.*, train.batch_size and the like."""
    return [f"train.model_dir={model_dir}", "task.min_digits=1", "task.max_digits=1", "task.num_train=200",
            "sampling.max_prompt_length=16", "sampling.max_completion_length=24", "grpo.num_generations=4",
            "grpo.rewards=[{name: r1_format, weight: 0.2}, {name: gsm8k_last_number}]",
            "grpo.accuracy_reward=gsm8k_last_number", "grpo.beta=0.04", "grpo.num_minibatches=2",
            "grpo.optim.warmup_steps=0", "grpo.optim.learning_rate=0.001"]
