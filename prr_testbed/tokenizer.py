"""Character-level tokenizer of the testbed's model (prr_testbed.model); its vocabulary is stored in the model's
config.json.

Ids: 0 = <pad> (left padding of batched prompts; the model never attends to it), 1 = <eos> (fills the generation
canvas after the response, LLaDA style), 2 = <mask> (the diffusion mask token), then one id per character.
Pure Python (no torch), so the task generators and the training script need nothing compiled.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

PAD, EOS, MASK = "<pad>", "<eos>", "<mask>"
SPECIALS = (PAD, EOS, MASK)
# Every character the task generators (prr_testbed.tasks) may emit.
DEFAULT_CHARS = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 " .,:;?!$#+-*/=()'|")


class TokenIdNames:
    """The Hugging Face names of the special ids (`mask_token_id`, `eos_token_id`, `pad_token_id`), which
    prr_ext.generate looks up on `model.config` and `model.tokenizer`, over this package's `mask_id` / `eos_id` /
    `pad_id`."""

    @property
    def mask_token_id(self) -> int:
        return self.mask_id

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    @property
    def pad_token_id(self) -> int:
        return self.pad_id


class CharTokenizer(TokenIdNames):
    """Maps each character to one id; the three special tokens come first."""

    def __init__(self, chars: str = DEFAULT_CHARS, specials: Sequence[str] = SPECIALS):
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be unique")
        if tuple(specials) != SPECIALS:
            raise ValueError(f"specials must be {SPECIALS}, got {tuple(specials)}")
        self.chars = chars
        self.specials = tuple(specials)
        self.itos: List[str] = list(self.specials) + list(chars)
        self.stoi: Dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self.pad_id, self.eos_id, self.mask_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)


    def encode(self, text: str) -> List[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
        """Text of `ids`: stops at the first <eos> (default), drops <pad>, writes a masked slot as '_'."""
        out = []
        n = len(self.itos)
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                if stop_at_eos:
                    break
                continue
            if i == self.pad_id:
                continue
            if i == self.mask_id:
                out.append("_")
            elif 0 <= i < n:
                out.append(self.itos[i])
            else:
                out.append("\ufffd")
        return "".join(out)

    def to_config(self) -> dict:
        return {"type": "char", "specials": list(self.specials), "chars": self.chars}

    @classmethod
    def from_config(cls, cfg: dict) -> "CharTokenizer":
        if cfg.get("type") != "char":
            raise ValueError(f"unsupported tokenizer type {cfg.get('type')!r}")
        return cls(chars=cfg["chars"], specials=cfg.get("specials", SPECIALS))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, pad_id=0, eos_id=1, mask_id=2)"
