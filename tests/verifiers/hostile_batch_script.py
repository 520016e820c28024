"""Run by test_hostile_batch.py in a fresh process (so that its children's peak memory is the workers' alone),
with this directory on PYTHONPATH (the workers import `stress_rewards`). Prints one JSON object.

Three batches:
- hostile: math_equiv on completions generated here (exponent towers, huge exponents, deep nesting, LaTeX
  bombs, megabyte strings, unicode and control characters), after `stress` calls that allocate 2 GiB and
  sleep, under a per-call limit and a batch deadline;
- deadline: a crash, then more never-ending calls than workers, with a per-call limit far beyond the deadline;
- scorer: the same kinds through `make_scorer` under jit, read back with `take_verifier_metrics`.
"""

from __future__ import annotations

import json
import random
import resource
import time

import numpy as np

from rlreason.verifiers import WorkerPool, get_reward_fn
from rlreason.verifiers.base import call_reward

import stress_rewards  # noqa: F401 - registers `stress`

MEMORY_LIMIT_MB = 1024
CALL_TIMEOUT_S = 1.0
DEADLINE_S = 3.0
# Two misbehaving calls per batch, as many as the pool's spare workers on 2 cores, so that the hostile math
# calls keep two warm workers however slowly replacements start on a loaded machine.
HOSTILE_STRESS = ("allocate", "sleep", "ok")
DEADLINE_STRESS = ("ok",) * 4 + ("crash", "spin") + ("sleep",) * 6


def hostile_answers(rng: random.Random) -> dict[str, str]:
    """Label -> answer text, generated: each kind at several sizes."""
    answers = {}
    for height in range(2, 7):
        digits = [str(rng.randint(2, 9)) for _ in range(height)]
        answers[f"latex tower {height}"] = "^{".join(digits) + "}" * (height - 1)
        answers[f"bare tower {height}"] = "^".join(digits)
        answers[f"python tower {height}"] = "**".join(digits)
    for digits in range(4, 10, 2):
        answers[f"(x+1)^10^{digits}"] = f"(x+1)^{{{10 ** digits}}}"
        answers[f"2^10^{digits}"] = f"2^{{{10 ** digits}}}"
        answers[f"matrix^10^{digits}"] = f"\\begin{{pmatrix}}1&2\\\\3&4\\end{{pmatrix}}^{{{10 ** digits}}}"
        answers[f"(10^{digits})!"] = f"(10^{{{digits}}})!"
        answers[f"binomial 10^{digits}"] = f"\\binom{{{10 ** digits}}}{{{10 ** digits // 2}}}"
    for depth in (20, 1000, 100_000):
        answers[f"parentheses {depth}"] = "(" * depth + "1" + ")" * depth
        answers[f"fractions {depth}"] = "\\frac{1}{" * depth + "2" + "}" * depth
        answers[f"roots {depth}"] = "\\sqrt{" * depth + "2" + "}" * depth
        answers[f"unclosed {depth}"] = "\\left(" * depth
    answers["macro bomb"] = "\\def\\a{\\a\\a}\\a"
    answers["megabyte of digits"] = "1" * 2 ** 20
    answers["megabyte of fractions"] = "\\frac{1}{2}+" * (2 ** 20 // 12)
    answers["megabyte of letters"] = "x" * 2 ** 20
    answers["control characters"] = "".join(chr(rng.randint(0, 31)) for _ in range(1000)) + "3"
    answers["surrogates"] = "\ud800\udfff3"
    answers["combining marks"] = "3" + "\u0301" * 10_000
    answers["bidi and zero-width"] = "\u202e3\u200d\u200b" * 1000
    answers["full-width digits"] = "３"
    tokens = ["^", "{", "}", "\\frac", "\\sqrt", "9", "x", "(", ")", "!", "+", "\\cdot", "_", "=", "\\left", "\\right"]
    for index in range(20):
        answers[f"random tokens {index}"] = "".join(rng.choice(tokens) for _ in range(rng.randint(10, 400)))
    return answers


def hostile_batch(pool: WorkerPool) -> dict:
    math_equiv = get_reward_fn("math_equiv")
    stress = get_reward_fn("stress")
    answers = hostile_answers(random.Random(0))
    # The stress calls first, so that they start at once on warm workers, whatever the machine's load.
    calls = [(call_reward, ("stress", stress.fn, "p", kind, "", {})) for kind in HOSTILE_STRESS]
    calls += [(call_reward, ("math_equiv", math_equiv.fn, "p", f"<think>t</think><answer>{text}</answer>", "3",
                             {})) for text in answers.values()]
    pool.start()
    start = time.monotonic()
    results = pool.run(calls, CALL_TIMEOUT_S, on_failure=None, deadline_s=DEADLINE_S)
    elapsed = time.monotonic() - start
    counts = pool.take_counts()
    math_results = results[len(HOSTILE_STRESS):]
    return {"elapsed_s": elapsed, "timed_out": counts.timed_out, "killed": counts.killed,
            "failed": results.count(None), "math_calls": len(math_results), "math_right": math_results.count(1.0),
            "stress": dict(zip(HOSTILE_STRESS, results))}


def deadline_batch(pool: WorkerPool) -> dict:
    stress = get_reward_fn("stress")
    calls = [(call_reward, ("stress", stress.fn, "p", kind, "", {})) for kind in DEADLINE_STRESS]
    pool.start()
    start = time.monotonic()
    results = pool.run(calls, timeout_s=600.0, on_failure=None, deadline_s=DEADLINE_S)
    elapsed = time.monotonic() - start
    counts = pool.take_counts()
    return {"elapsed_s": elapsed, "results": results, "timed_out": counts.timed_out, "killed": counts.killed}


def scorer_batch() -> dict:
    import jax

    from rlreason.config import RewardConfig
    from rlreason.tokenizers import train_sentencepiece
    from rlreason.verifiers import bridge, encode_golds

    from token_rows import padded_rows

    texts = ["sleep", "crash", "ok", "ok", "<answer>5 = 3</answer>", "<answer>3</answer>"]
    tokenizer = train_sentencepiece(texts * 50 + ["answer sleep crash ok"] * 50, vocab_size=320, byte_fallback=True)
    score = jax.jit(bridge.make_scorer(tokenizer, (RewardConfig("stress"), RewardConfig("math_equiv")),
                                       timeout_s=CALL_TIMEOUT_S, deadline_s=DEADLINE_S,
                                       memory_limit_mb=MEMORY_LIMIT_MB, raise_pool_errors=False))
    bridge.shared_pool(("rlreason.verifiers.math", "stress_rewards"), MEMORY_LIMIT_MB).start()  # the scorer's pool
    completion_tokens, completion_mask = padded_rows(tokenizer, texts, 16)
    prompt = np.zeros((len(texts), 2), np.int32)
    golds = encode_golds([("3", {})] * len(texts), max_bytes=48)
    rewards = np.asarray(score(prompt, prompt.astype(bool), completion_tokens, completion_mask, golds))
    first = bridge.take_verifier_metrics()
    return {"rewards": rewards.tolist(), "metrics": first, "metrics_after_reset": bridge.take_verifier_metrics()}


def main() -> None:
    pool = WorkerPool(preload=["rlreason.verifiers.math", "stress_rewards"], memory_limit_mb=MEMORY_LIMIT_MB)
    [limit] = pool.run([(resource.getrlimit, (resource.RLIMIT_AS,))], timeout_s=60.0, on_failure=None)
    report = {"num_workers": pool.num_workers, "worker_address_space_limit": list(limit),
              "hostile": hostile_batch(pool), "deadline": deadline_batch(pool)}
    pool.close()  # every worker this pool started has now been reaped, so it counts in RUSAGE_CHILDREN
    report["workers_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    report["scorer"] = scorer_batch()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
