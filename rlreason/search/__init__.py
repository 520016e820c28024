"""Process rewards and search over reasoning steps: `steps` (the segmentation every other module shares),
`step_labels` (Math-Shepherd Monte-Carlo labels), `prm` (a process reward model's head and loss), `continuation`
(continuing partial solutions through the compiled sampler), `beam` (step-level beam search), `mcts` (batched
MCTS over steps, and SFT rows from its results), `rollouts` (MCTS results as GRPO groups)."""
