"""A token ↔ index vocabulary with the four special tokens every seq2seq model needs."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Sequence

from .checks import whole_number

PAD_TOKEN, SOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<sos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, SOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_INDEX, SOS_INDEX, EOS_INDEX, UNK_INDEX = range(4)


def reject_text(value: object, name: str) -> None:
    """``TypeError`` if ``value`` is a ``str`` where a list of tokens (or of sentences) is
    wanted: Python would happily iterate over it letter by letter."""
    if isinstance(value, str):
        raise TypeError(
            f"{name} is a str ({value[:30]!r}), not a list: tokenise it first "
            "(helpers.data.get_tokenizer('en')(text) for words, list(text) for characters)"
        )


def _reject_non_strings(tokens: Iterable[object], name: str = "tokens") -> None:
    """``TypeError`` for a token that is not a ``str``: indices (already encoded?) or a
    tensor would otherwise all become ``<unk>``, or tokens of a vocabulary, silently."""
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(
                f"{name} must be strings, got {token!r} ({type(token).__name__}): "
                "already encoded? Vocabulary.decode turns indices back into tokens"
            )


class Vocabulary:
    """Maps tokens to indices and back.

    The specials always take indices 0–3 (``<pad>``, ``<sos>``, ``<eos>``, ``<unk>``) in
    *both* the source and the target vocabulary, so a German decoder starts from the
    German ``<sos>`` — the article's decoder started from the English one by mistake.
    Tokens seen fewer than ``min_freq`` times in training map to ``<unk>``.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("a vocabulary must not hold the same token twice")
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {token: index for index, token in enumerate(tokens)}

    @classmethod
    def build(cls, tokenised: Iterable[Sequence[str]], min_freq: int = 1) -> Vocabulary:
        """Count tokens over tokenised sentences; keep those seen ≥ ``min_freq`` times.

        Ties in frequency are broken alphabetically, so the same corpus always gives
        the same indices.
        """
        # NaN once dropped every word ("nan >= count" is never true), "2" failed on a <
        whole_number("min_freq", min_freq)
        reject_text(tokenised, "tokenised")
        sentences = list(tokenised)
        for index, sentence in enumerate(sentences):
            reject_text(sentence, f"tokenised[{index}]")
            _reject_non_strings(sentence, f"tokenised[{index}]")
        counts = Counter(token for sentence in sentences for token in sentence)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        kept = sorted(
            (token for token, count in counts.items() if count >= min_freq),
            key=lambda token: (-counts[token], token),
        )
        return cls([*SPECIAL_TOKENS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens: {self.itos[4:10]}…)"

    pad_index, sos_index, eos_index, unk_index = PAD_INDEX, SOS_INDEX, EOS_INDEX, UNK_INDEX

    def encode(
        self, tokens: Sequence[str], add_sos: bool = False, add_eos: bool = False
    ) -> list[int]:
        """Tokens → indices; unknown tokens become ``<unk>``."""
        reject_text(tokens, "tokens")
        indices = [self.stoi.get(token, UNK_INDEX) for token in tokens]
        if UNK_INDEX in indices:  # only then: the check costs nothing on known words
            _reject_non_strings(tokens)
        if add_sos:
            indices.insert(0, SOS_INDEX)
        if add_eos:
            indices.append(EOS_INDEX)
        return indices

    def decode(self, indices: Iterable[int], strip_special: bool = True) -> list[str]:
        """Indices → tokens. Stops at ``<eos>`` and drops ``<sos>``/``<pad>`` when stripping."""
        if getattr(indices, "ndim", 1) > 1:  # a (B, T) tensor or array: a whole batch
            raise ValueError(
                f"decode takes one sentence's indices (1-D), got shape "
                f"{tuple(indices.shape)}: decode each row of a batch on its own"
            )
        if isinstance(indices, str):  # "45" read as the indices 4 and 5
            raise TypeError(
                f"decode takes token indices, got a str ({indices[:30]!r}): encode maps tokens "
                "to indices"
            )
        tokens: list[str] = []
        for index in indices:
            try:  # int() would round 4.7 down to a token: a float is no index
                index = operator.index(index)
            except TypeError:
                raise TypeError(
                    f"decode takes whole-number indices, got {index!r} ({type(index).__name__})"
                ) from None
            if not 0 <= index < len(self.itos):  # -1 would silently read the last token
                raise ValueError(f"index {index} is outside this vocabulary of {len(self)} tokens")
            if strip_special:
                if index == EOS_INDEX:
                    break
                if index in (PAD_INDEX, SOS_INDEX):
                    continue
            tokens.append(self.itos[index])
        return tokens

    def to_list(self) -> list[str]:
        """The plain list of tokens; what a checkpoint stores."""
        return list(self.itos)
