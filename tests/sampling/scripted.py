"""A tiny real transformer that writes a chosen chain of tokens, and a piece tokenizer for it.

`scripted_params` builds random weights (attention and MLP as `init_params` makes them) and then sets the embedding
and the output head so that the argmax of the next-token logits after token t is CHAIN[t]: the embedding of t is a
large multiple of a one-hot vector, so the residual stream stays dominated by it, and the head maps that
direction to CHAIN[t]'s logit. The attention and MLP still move every logit by a context-dependent amount, so a
log-prob computed from a wrong cache or a wrong position would differ from the full forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlreason.config import ModelConfig
from rlreason.models.transformer import init_params
from rlreason.tokenizers.base import Tokenizer

PIECES = ["<pad>", "<eos>", "Q", "R", "<calc>", "</calc>", "<result>", "</result>", "<answer>", "</answer>",
          *"0123456789+-*/().:= abcdefghijklmnopqrstuvwxyz?"]
PAD, EOS = 0, 1
ID = {piece: index for index, piece in enumerate(PIECES)}
CFG = ModelConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=96, init_std=0.15, tie_embeddings=False)
# The chain greedy decoding follows after prompt token Q: a calculator call, the result's tokens (which the
# sampler inserts; the model's own guess after </calc> is "7"), then an answer.
CALL = ["<calc>", "2", "+", "3", "</calc>"]
AFTER_RESULT = ["<answer>", "5", "</answer>", "<eos>"]
# After R the model answers at once, without a call.
NO_CALL = ["<answer>"]


class PieceTokenizer(Tokenizer):
    """Greedy longest-match over PIECES, a character it lacks read as "?"; ids 0 and 1 are pad and EOS."""

    pad_id, eos_id, bos_id, stop_ids = PAD, EOS, None, (EOS,)

    @property
    def vocab_size(self) -> int:
        return len(PIECES)

    def encode(self, text: str) -> list[int]:
        ids, start = [], 0
        while start < len(text):
            piece = max((p for p in PIECES[2:] if text.startswith(p, start)), key=len, default=None)
            ids.append(ID["?" if piece is None else piece])
            start += 1 if piece is None else len(piece)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(PIECES[i] for i in ids if i not in (PAD, EOS))

    def token_to_id(self, token: str) -> int | None:
        return ID.get(token)

    def is_special(self, token_id: int) -> bool:
        return token_id in (PAD, EOS)

    def save_to(self, directory) -> str:
        raise NotImplementedError


def chain() -> dict[int, int]:
    """token -> the token the scripted model predicts after it."""
    follows = {}
    for sequence in (["Q", *CALL, "7"], ["</result>", *AFTER_RESULT], ["R", *NO_CALL]):
        for current, following in zip(sequence, sequence[1:]):
            follows.setdefault(ID[current], ID[following])
    return follows


def scripted_params(margin: float = 6.0, seed: int = 0, calls_again: bool = False):
    """Params of CFG whose greedy continuation of token t is chain()[t] (EOS for the tokens the chain leaves out),
    with a logit margin of about `margin` over the other tokens. `calls_again`: after a result the model makes
    the same call again, forever."""
    params = init_params(CFG, jax.random.key(seed))
    embed = np.zeros((CFG.vocab_size, CFG.hidden_size), np.float32)
    embed[np.arange(CFG.vocab_size), np.arange(CFG.vocab_size)] = 30.0
    follows = chain()
    if calls_again:
        follows[ID["</result>"]] = ID[CALL[0]]
    head = np.zeros((CFG.hidden_size, CFG.vocab_size), np.float32)
    # The final norm scales the residual to about sqrt(hidden_size) along the token's direction.
    for token in range(CFG.vocab_size):
        head[token, follows.get(token, EOS)] = margin / np.sqrt(CFG.hidden_size)
    return {**params, "embed": jnp.asarray(embed), "lm_head": jnp.asarray(head)}


def prompts(*firsts: str, length: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded one-token prompts [P, length] and their masks."""
    tokens = np.zeros((len(firsts), length), np.int32)
    mask = np.zeros((len(firsts), length), np.int32)
    tokens[:, -1] = [ID[first] for first in firsts]
    mask[:, -1] = 1
    return tokens, mask


def scripted_scorer(prompt_tokens, prompt_mask, tokens, mask, gold_bytes):
    """Rewards [B, 3] from tokens alone: r1_format (an </answer> was written), exact_answer and lenient_answer (two
    5s: the calculator's and the answer's)."""
    del prompt_tokens, prompt_mask, gold_bytes
    written = mask > 0
    answered = jnp.any(written & (tokens == ID["</answer>"]), axis=1)
    fives = jnp.sum(written & (tokens == ID["5"]), axis=1) >= 2
    return jnp.stack([answered, fives, fives], axis=1).astype(jnp.float32)


REWARD_NAMES = ("r1_format", "exact_answer", "lenient_answer")


def scripted_grpo(tools, sampling, arrays=None, group_size: int = 2, margin: float = 6.0):
    """GRPO functions of the scripted model (`scripted_params(margin)`) with `tools` (a ToolTurns or None), its
    initial state and a batch maker (prompt letters -> batch). `arrays`: a transformer.Layout (None: the default)."""
    import optax

    from rlreason.config import GRPOConfig
    from rlreason.models.transformer import Layout
    from rlreason.rl.step import init_train_state, make_grpo_functions

    # eps = lr: the first update is then no more sensitive to float noise in the gradient than the gradient.
    optimizer = optax.adam(1e-2, eps=1e-2)
    functions = make_grpo_functions(GRPOConfig(num_generations=group_size), CFG, sampling, optimizer, scripted_scorer,
                                    stop_ids=(EOS,), pad_id=PAD, reward_names=REWARD_NAMES,
                                    accuracy_reward="exact_answer", learning_rate_fn=lambda step: 1e-2, tools=tools,
                                    arrays=arrays or Layout())
    state = init_train_state(scripted_params(margin), optimizer, jax.random.key(3), keep_reference=False)

    def batch(*firsts: str):
        tokens, mask = prompts(*firsts)
        return {"prompt_tokens": tokens, "prompt_mask": mask, "gold_bytes": np.zeros((len(firsts), 4), np.uint8)}

    return functions, state, batch
