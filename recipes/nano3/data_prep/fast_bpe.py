"""A faster engine for byte-level BPE tokenizers, used only where it gives HF tokenizers' ids.

HF tokenizers' `encode_batch` is the limit of the .bin/.idx encoder (binidx.py): about 95% of its
time. tiktoken runs the same algorithm about 4x faster on one thread: split the text with a
regex, then merge each piece's bytes pair by pair, lowest rank first. Loaded with ranks taken
from the tokenizer.json's own vocabulary (through GPT-2's byte↔unicode table, whose ids follow
the merges' order) and the split pattern HF's pre-tokenizers amount to, it gives the same ids.

"The same ids" is proven twice before it is used:

1. `FastBPE.from_json` accepts only what it can reproduce: no normalizer, a BPE model without
   dropout, prefixes, suffixes or byte fallback, all 256 byte symbols in the vocabulary, merges
   whose tokens' ids rise in merge order, a pre-tokenizer it knows the regex of (GPT-2's
   ByteLevel, digits split before it, or a Split regex before a regex-less ByteLevel), and
   added tokens without strip or single-word rules (they are cut out of the text first, as HF
   does). Anything else raises NotEquivalent with the reason.
2. `select` then encodes a sample of the input and EDGE_CASES with both engines; one differing
   id (or one text only one of them refuses) and HF tokenizers encode everything.

tiktoken is loaded from those ranks only, never from its hosted encodings: nothing downloads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: HF tokenizers' ByteLevel pre-tokenizer regex (use_regex=True), GPT-2's.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
#: Digits(individual_digits=True), then ByteLevel: every numeric character (Rust's
#: char::is_numeric, \p{N}) a piece of its own, GPT-2's regex between them. A numeric character
#: ends the piece before it as the end of the text would, hence `(?![^\s\p{N}])` for `(?!\S)`.
DIGITS_GPT2_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
#: Digits(individual_digits=False): runs of numeric characters, then GPT-2's regex.
DIGIT_RUNS_GPT2_PATTERN = r"""\p{N}+|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

#: Texts where a BPE engine could part from HF's: added tokens inside text, whitespace runs and
#: kinds, CRLF, digits (ASCII and not), punctuation runs, contractions, non-Latin scripts, emoji
#: with modifiers and joiners, control characters, and lone surrogates (which HF refuses).
EDGE_CASES: tuple[str, ...] = (
    "",
    " ",
    "hello world",
    " leading space and trailing space ",
    "a  b   c    d\t\te\n\nf\n \n g",
    "   \n\n\t  ",
    "line one\r\nline two\r\n\r\nend\r",
    "x = 12345 + 6.78e-9; 2024-01-02 10:20:30, 1,000,000.00 and 007",
    "a 1 b  22 c   333 d\n4\t5",
    "superscripts x²³ fractions ½¾ roman Ⅻ arabic-indic ١٢٣ devanagari १२३ fullwidth １２",
    "!!! ??? ... --- ==> <== !== (((nested))) [[x]] {{y}} /* c */ // d #!$%^&*",
    "'s 't 're 've 'm 'll 'd It's I'M we'LL they've ' s''s",
    "日本語のテキストと漢字、ひらがな。 한국어 텍스트 中文文本",
    "Ελληνικά κείμενο, Кириллица текст, עברית, العربية, हिन्दी, ไทย",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣ heart ❤️",
    "naïve café résumé Å Ω µ ﬁ ǅ İı ß ẞ",
    "\x00\x01\x1c\x1d\x1e\x1f\x7f\x85\xa0\u1680\u2000\u2007\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff",
    "tab\x0bvt\x0cff nbsp\xa0x  \u3000y",
    "<eos>",
    "text<eos>more",
    "<eos><eos><pad> <bos>x<user>hi<end><assistant>yo<end>",
    "<|endoftext|> <s> </s> [CLS] <unk> <eos",
    "a\ud800b",
    "\udfff",
    "e\u0301 combining\u0308 marks\u20dd",
    "\U0001f600" * 40 + " " * 40 + "z" * 200,
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
)


class NotEquivalent(Exception):
    """The tokenizer has something the fast engine does not reproduce; the message says what."""


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's table, reversed: the printable character standing for each byte in a byte-level vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def split_pattern(pre_tokenizer: dict | None) -> str:
    """The one regex that cuts a text into the pieces HF's pre-tokenizer would, or NotEquivalent."""

    def byte_level(step: dict, use_regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and not step.get("add_prefix_space", True)
                and bool(step.get("use_regex", True)) == use_regex)

    if pre_tokenizer is None:
        raise NotEquivalent("no pre-tokenizer (not a byte-level BPE)")
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if len(steps) == 1 and byte_level(steps[0], use_regex=True):
        return GPT2_PATTERN
    if len(steps) == 2 and steps[0].get("type") == "Digits" and byte_level(steps[1], use_regex=True):
        return DIGITS_GPT2_PATTERN if steps[0].get("individual_digits") else DIGIT_RUNS_GPT2_PATTERN
    if (len(steps) == 2 and steps[0].get("type") == "Split" and "Regex" in (steps[0].get("pattern") or {})
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert") and byte_level(steps[1], use_regex=False)):
        return steps[0]["pattern"]["Regex"]
    kinds = [s.get("type") for s in steps]
    raise NotEquivalent(f"pre-tokenizer {kinds} {json.dumps(pre_tokenizer)[:200]} is not one whose regex is known here")


@dataclass(frozen=True)
class AddedTokens:
    """Added tokens cut out of the text before BPE, as HF's AddedVocabulary does: first those
    not normalized (on the raw text), then the normalized ones (no normalizer: the same text),
    each pass leftmost-longest."""

    ids: dict[str, int]
    raw: re.Pattern | None
    normalized: re.Pattern | None

    @staticmethod
    def from_json(added: list[dict]) -> AddedTokens:
        for token in added:
            rules = [rule for rule in ("single_word", "lstrip", "rstrip") if token.get(rule)]
            if rules:
                raise NotEquivalent(f"added token {token['content']!r} has {'/'.join(rules)}")

        def alternation(contents: list[str]) -> re.Pattern | None:
            contents = sorted(set(c for c in contents if c), key=len, reverse=True)  # longest first: leftmost-longest
            return re.compile("|".join(map(re.escape, contents))) if contents else None

        return AddedTokens(
            {t["content"]: int(t["id"]) for t in added},
            alternation([t["content"] for t in added if not t.get("normalized", True)]),
            alternation([t["content"] for t in added if t.get("normalized", True)]),
        )

    def pieces(self, text: str) -> list[str | int]:
        """The text as runs of plain text (str) and added tokens' ids (int), in order."""
        out: list[str | int] = []
        for part in self._cut(text, self.raw):
            out.extend(self._cut(part, self.normalized) if isinstance(part, str) else [part])
        return out

    def _cut(self, text: str, pattern: re.Pattern | None) -> list[str | int]:
        if pattern is None:
            return [text]
        out: list[str | int] = []
        start = 0
        for match in pattern.finditer(text):
            if match.start() > start:
                out.append(text[start : match.start()])
            out.append(self.ids[match.group()])
            start = match.end()
        if start < len(text):
            out.append(text[start:])
        return out


class FastBPE:
    """tiktoken's BPE with a byte-level tokenizer.json's ranks and split pattern; thread-safe."""

    def __init__(self, encoding, added: AddedTokens, vocab_size: int, pattern: str) -> None:
        self._core = encoding._core_bpe
        self.added = added
        self.vocab_size = vocab_size
        self.pattern = pattern
        self._search = (added.raw, added.normalized)

    @staticmethod
    def from_json(tokenizer_json: str) -> FastBPE:
        """The engine for this tokenizer.json, or NotEquivalent with the reason it cannot be one."""
        spec = json.loads(tokenizer_json)
        if spec.get("normalizer") is not None:
            raise NotEquivalent(f"the tokenizer has a normalizer ({spec['normalizer'].get('type')})")
        if spec.get("truncation") is not None or spec.get("padding") is not None:
            raise NotEquivalent("the tokenizer truncates or pads")
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise NotEquivalent(f"the model is {model.get('type')}, not BPE")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise NotEquivalent(f"the BPE model has {key}={model[key]!r}")
        if model.get("byte_fallback"):
            raise NotEquivalent("the BPE model has byte_fallback")
        pattern = split_pattern(spec.get("pre_tokenizer"))
        added = AddedTokens.from_json(spec.get("added_tokens") or [])
        ranks = byte_ranks(model["vocab"], model.get("merges") or [], set(added.ids))
        import tiktoken

        try:
            encoding = tiktoken.Encoding("nano3-byte-level-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        except Exception as error:  # e.g. a Split regex tiktoken's regex engine does not take
            raise NotEquivalent(f"tiktoken does not take it: {error}") from error
        vocab_size = max([*model["vocab"].values(), *added.ids.values()]) + 1
        return FastBPE(encoding, added, vocab_size, pattern)

    def encode(self, text: str) -> list[int]:
        """One text's ids; raises for a text HF would refuse too (a lone surrogate)."""
        raw, normalized = self._search
        if (raw is None or raw.search(text) is None) and (normalized is None or normalized.search(text) is None):
            return self._core.encode_ordinary(text)  # a list: 1.4x faster here than tiktoken's numpy buffer
        ids: list[int] = []
        for piece in self.added.pieces(text):
            if isinstance(piece, int):
                ids.append(piece)
            else:
                ids += self._core.encode_ordinary(piece)
        return ids

    def encode_documents(self, texts: Sequence[str], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(the documents' ids one after the other, eos after each; their lengths), as binidx stores them."""
        encode = self.encode
        ids: list[int] = []
        lengths: list[int] = []
        for text in texts:
            document = encode(text)
            ids += document
            ids.append(eos_id)
            lengths.append(len(document) + 1)
        return np.array(ids, dtype=dtype), np.array(lengths, dtype=np.int32)


def byte_ranks(vocab: dict[str, int], merges: list, added: set[str]) -> dict[bytes, int]:
    """tiktoken's ranks: each vocabulary token's bytes → its id, which must rise in merge order
    (tiktoken merges the pair whose token ranks lowest, HF the pair merged first)."""
    to_byte = unicode_to_byte()
    ranks: dict[bytes, int] = {}
    for token, token_id in vocab.items():
        if token in added:
            continue
        try:
            ranks[bytes(to_byte[c] for c in token)] = token_id
        except KeyError:
            raise NotEquivalent(f"vocabulary token {token!r} is not byte-level") from None
    if len(ranks) != len(vocab) - len(added & set(vocab)):
        raise NotEquivalent("two vocabulary tokens stand for the same bytes")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise NotEquivalent(f"{len(missing)} of the 256 bytes have no token of their own (e.g. byte {missing[0]})")
    previous = -1
    merged = set()
    for merge in merges:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token = left + right
        token_id = vocab.get(token)
        if token_id is None or left not in vocab or right not in vocab:
            raise NotEquivalent(f"merge {left!r} + {right!r} is of tokens outside the vocabulary")
        if token_id <= previous:
            raise NotEquivalent(f"merge {left!r} + {right!r} comes after a merge of a higher id: ids do not follow the merges")
        previous = token_id
        merged.add(token)
    orphans = [t for t in vocab if len(t) > 1 and t not in merged and t not in added]
    if orphans:
        raise NotEquivalent(f"{len(orphans)} vocabulary tokens no merge makes (e.g. {orphans[0]!r})")
    return ranks


def _hf_ids(tok: Tokenizer, text: str) -> list[int] | str:
    try:
        return tok.encode(text, add_special_tokens=False).ids
    except Exception as error:  # noqa: BLE001 - the outcome is what is compared
        return f"refused ({type(error).__name__})"


def _fast_ids(fast: FastBPE, text: str) -> list[int] | str:
    try:
        return fast.encode(text)
    except Exception as error:  # noqa: BLE001
        return f"refused ({type(error).__name__})"


def first_difference(fast: FastBPE, tok: Tokenizer, texts: Sequence[str]) -> str | None:
    """None if both engines give every text the same ids (or both refuse it), else the first text that differs."""
    hf = tok.encode_batch([t for t in texts if not _refused(t)], add_special_tokens=False)
    ours = iter(hf)
    for text in texts:
        expected = _hf_ids(tok, text) if _refused(text) else next(ours).ids
        got = _fast_ids(fast, text)
        if isinstance(expected, str) != isinstance(got, str) or (not isinstance(got, str) and got != expected):
            return f"text {text[:60]!r}: HF {str(expected)[:80]}, fast {str(got)[:80]}"
    return None


def _refused(text: str) -> bool:
    """A text HF's encode_batch would raise for (lone surrogates): compared one at a time."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def select(tok: Tokenizer, sample: Sequence[str], tokenizer_json: str | None = None) -> tuple[FastBPE | None, str]:
    """(the fast engine, or None for HF tokenizers; the log line saying which and why)."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None, "tokenizer engine: HF tokenizers (tiktoken is not installed)"
    try:
        fast = FastBPE.from_json(tokenizer_json or tok.to_str())
    except NotEquivalent as reason:
        return None, f"tokenizer engine: HF tokenizers ({reason})"
    difference = first_difference(fast, tok, [*EDGE_CASES, *sample])
    if difference:
        return None, f"tokenizer engine: HF tokenizers (the fast engine differs on {difference})"
    return fast, (f"tokenizer engine: tiktoken {tiktoken_version()} with this tokenizer's ranks "
                  f"(same ids as HF tokenizers on {len(EDGE_CASES)} edge cases and {len(sample)} sampled documents)")


def tiktoken_version() -> str:
    from importlib import metadata

    return metadata.version("tiktoken")
