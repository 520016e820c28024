"""Process rewards and search over reasoning steps: `steps` (the segmentation every other module shares),
`step_labels` (Math-Shepherd Monte-Carlo labels), `prm` (a process reward model's head and loss), `beam`
(step-level beam search)."""
