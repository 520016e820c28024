"""GRPO: group-relative advantages, the clipped policy loss, and the compiled training step."""
