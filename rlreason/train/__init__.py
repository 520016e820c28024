"""The loops around the compiled steps: pretraining, GRPO training, evaluation, the demo and its report."""
