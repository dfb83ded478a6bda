"""The nano3 tokenizer: byte-level BPE in which every digit is a token of its own.

Splitting digits before BPE keeps numbers from merging into arbitrary chunks ("45" one token,
"46" two), which is what makes multi-digit addition learnable by a model this small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

#: "<user>{content}<end><assistant>{content}<end>", then "<assistant>" when a reply is wanted. The
#: generation markers let a trainer find the assistant's tokens (loss on the answer only); they
#: render to nothing.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user>{{ message['content'] }}<end>"
    "{% elif message['role'] == 'assistant' %}<assistant>{% generation %}{{ message['content'] }}<end>"
    "{% endgeneration %}"
    "{% else %}{{ raise_exception('nano3 chats have user and assistant turns only, got ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def check_special_tokens(special_tokens: Sequence[str]) -> None:
    missing = [t for t in (PAD, BOS, EOS, "<user>", "<assistant>", "<end>") if t not in special_tokens]
    if missing:
        raise SystemExit(f"error: tokenizer.special_tokens lacks {missing} (the chat template and trainers use them)")


def train(documents: Iterable[str], vocab_size: int, special_tokens: Sequence[str]) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer, special_tokens: Sequence[str]) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens=[t for t in special_tokens if t not in (PAD, BOS, EOS)],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def save(tokenizer: Tokenizer, special_tokens: Sequence[str], folder: Path) -> None:
    """Keep the chat template inside tokenizer_config.json, where the artifact contract puts it."""
    to_transformers(tokenizer, special_tokens).save_pretrained(str(folder), save_jinja_files=False)
