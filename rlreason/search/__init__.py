"""Process rewards and search over reasoning steps. So far: `steps`, the segmentation of completions into steps
that step labels, process reward models and step-level search share."""
