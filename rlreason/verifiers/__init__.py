"""Rule-based rewards: text verifiers with a registry, token-level JAX versions, and the host-callback bridge.

Importing this package registers the built-in reward functions (names for `RewardConfig.name`):
`r1_format`, `exact_answer`, `countdown`, `gsm8k`, `gsm8k_last_number`, `number_only`, `math_equiv`, `code_tests`,
`language_consistency`.

Modules that import no JAX (verifier worker processes import them): `base` (contract, registry), `format`,
`answers`, `countdown`, `math`, `language`, `code` (tests run in `sandbox`), `isolation` (time-bounded worker pool), `scoring` (batch of texts -> [B, K]),
`golds` (gold answers as bytes). Modules that use JAX are imported by name: `combine` (weighted sum, metrics),
`tokens` (token-level rewards), `bridge` (`make_scorer`).
"""

from rlreason.verifiers import answers, code, countdown, format, language, math  # noqa: F401 - registers the built-in functions
from rlreason.verifiers.base import REWARD_FUNCTIONS, RewardFn, RewardFunction, get_reward_fn, reward_function
from rlreason.verifiers.golds import decode_gold, encode_golds
from rlreason.verifiers.isolation import WorkerPool, WorkerStartError, shared_pool
from rlreason.verifiers.scoring import score_texts

__all__ = ["REWARD_FUNCTIONS", "RewardFn", "RewardFunction", "WorkerPool", "WorkerStartError", "decode_gold",
           "encode_golds", "get_reward_fn", "reward_function", "score_texts", "shared_pool"]
