"""Seeded small models built from a config (no hub): tokenizers trained on a corpus, GPT-2 or Llama LMs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

SPECIAL = "<|endoftext|>"  # bos = eos = pad, as in GPT-2


@dataclass(frozen=True)
class ArchConfig:
    """Architecture of a small causal LM built from scratch."""

    arch: str = field(default="gpt2", metadata={"help": "gpt2 (Conv1D layers) or llama (nn.Linear, RMSNorm)"})
    n_layer: int = field(default=2, metadata={"help": "transformer blocks"})
    d_model: int = field(default=128, metadata={"help": "hidden width"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    max_positions: int = field(default=128, metadata={"help": "context length"})
    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary size (tokenizer trained on the corpus)"})

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"ArchConfig.arch must be 'gpt2' or 'llama', got {self.arch!r}")
        for name in ("n_layer", "d_model", "n_head", "max_positions", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ArchConfig.{name} must be >= 1")
        if self.d_model % self.n_head:
            raise ValueError(f"ArchConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) on ``texts``.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as bos, eos and pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # Every text starts with <|endoftext|> (the tokenizer's own template, so any tool that loads it agrees).
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A $B",
                                                       special_tokens=[(SPECIAL, tok.token_to_id(SPECIAL))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL)


def build_model(cfg: ArchConfig, vocab_size: int, seed: int = 0) -> Any:
    """A freshly initialised causal LM for ``cfg`` (deterministic for ``seed``)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if cfg.arch == "gpt2":
        conf = GPT2Config(vocab_size=vocab_size, n_positions=cfg.max_positions, n_embd=cfg.d_model,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(conf)
    conf = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=4 * cfg.d_model,
                       num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                       num_key_value_heads=cfg.n_head, max_position_embeddings=cfg.max_positions,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True)
    return LlamaForCausalLM(conf)
