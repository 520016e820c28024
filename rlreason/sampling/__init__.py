"""Autoregressive sampling with a preallocated KV cache, compiled as one program."""

from rlreason.sampling.sampler import Rollout, SamplingParams, generate

__all__ = ["Rollout", "SamplingParams", "generate"]
