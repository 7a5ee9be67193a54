"""Prompt-learning plumbing: open_clip's text tower from token embeddings, and learnable-context prompts.

CoOp and CoCoOp replace some token embeddings of a prompt by learned vectors, so the text tower must
start from embeddings rather than token ids. ``encode_token_embeddings`` replicates
``open_clip.model.CLIP.encode_text`` of the installed open_clip (3.3) after its embedding lookup, with
gradients; ``ContextPrompts`` holds the frozen pieces of C prompts "<sot> X X ... X {classname}. <eot>"
around the context slots. ``TextCache`` keeps eval-mode class texts until a trained weight changes.
docs/backbones.md describes the methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from pipeline.backbones.encoder import Encoder
from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

# What encode_text of open_clip's CLIP reads; CustomTextCLIP (model.text) has another forward.
TEXT_TOWER_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")


def check_text_tower(model: nn.Module) -> None:
    """Check that ``model`` has open_clip ``CLIP``'s text tower (the layout ``encode_token_embeddings`` runs).

    Raises:
        InputError: another layout (e.g. ``CustomTextCLIP``); the message names the model class.
    """
    missing = [part for part in TEXT_TOWER_PARTS if not hasattr(model, part)]
    if missing:
        raise InputError(
            f"config key 'encoder.model': prompt learning needs open_clip's CLIP text tower, "
            f"{type(model).__name__} has no {', '.join(missing)}"
        )


def text_width(model: nn.Module) -> int:
    """W, the width of the text transformer (the size of one token embedding)."""
    check_text_tower(model)
    return int(model.token_embedding.embedding_dim)


def pooled_length(model: nn.Module, tokens: Tensor) -> int:
    """How many leading positions of ``tokens`` (N, L) the text tower needs: up to the last pooled one.

    CLIP's text transformer is causal (``attn_mask``) and pools one position per prompt, the
    end-of-text token (``text_pool_type`` "argmax": the highest token id; "eos": ``text_eos_id``), so
    the padding after it changes nothing that is pooled. Prompts are short (CoCoOp's ~10 of ViT-B/16's
    77 positions), so cutting the padding off makes the tower several times cheaper
    (bench/text_tower.py). Any other pooling, or no causal mask: all L positions.
    """
    length = int(tokens.shape[1])
    pool = getattr(model, "text_pool_type", None)
    if getattr(model, "attn_mask", None) is None or length == 0:
        return length
    if pool == "argmax":
        ends = tokens.argmax(dim=-1)
    elif pool == "eos" and getattr(model, "text_eos_id", None) is not None:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    else:
        return length
    return int(ends.max()) + 1


def encode_token_embeddings(model: nn.Module, embeddings: Tensor, tokens: Tensor) -> Tensor:
    """Run the text tower from token embeddings: ``CLIP.encode_text`` after its lookup, with gradients.

    The steps are those of ``open_clip.model.CLIP.encode_text`` (open_clip 3.3): cast to the
    transformer's dtype, add the positional embedding, the causal transformer, ``ln_final``, pool
    (``text_global_pool`` with the model's pool type: the end-of-text token for CLIP), project;
    on the first ``pooled_length`` positions only, which gives the same features up to float
    rounding (~1e-6). ``encode_token_embeddings(m, m.token_embedding(t), t)`` equals
    ``m.encode_text(t)`` to that precision.

    Args:
        model: an open_clip ``CLIP`` (frozen; gradients flow to ``embeddings`` only).
        embeddings: (N, L, W) token embeddings, some of them learned.
        tokens: (N, L) the token ids the prompts stand for (the pooling reads the end-of-text position).

    Returns:
        (N, D) unnormalised text features.
    """
    n = pooled_length(model, tokens)
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings[:, :n].to(cast_dtype)  # (N, n, W)
    x = x + model.positional_embedding[:n].to(cast_dtype)  # (N, n, W)
    mask = model.attn_mask[:n, :n] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)  # (N, n, W)
    x = model.ln_final(x)  # (N, n, W)
    eos = getattr(model, "text_eos_id", None)
    x = text_global_pool(x, tokens[:, :n].to(x.device), model.text_pool_type, eos_token_id=eos)  # (N, W)
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection  # (N, D)
    return x


def encode_text_tokens(model: nn.Module, tokens: Tensor) -> Tensor:
    """``model.encode_text(tokens)``, unnormalised (N, D), through ``encode_token_embeddings`` (only the
    positions up to the end-of-text token) when the model has CLIP's text tower; otherwise (a
    CustomTextCLIP) its own ``encode_text``."""
    if not all(hasattr(model, part) for part in TEXT_TOWER_PARTS):
        return model.encode_text(tokens)
    return encode_token_embeddings(model, model.token_embedding(tokens), tokens)


def context_words(ctx_init: str, n_ctx: int, templates: Sequence[str]) -> tuple[str, str]:
    """(prefix, suffix) of the prompts "{prefix} {classname}{suffix}" whose prefix tokens are the context.

    ``ctx_init``: "" = ``n_ctx`` placeholder tokens "X X ... X" (CoOp's random init), suffix ".";
    "template" = the words around "{}" in the dataset's first template (e.g. "a photo of the digit"
    and "."), so training starts from the zero-shot prompt; any other text = those words, suffix "."
    (CoOp's and CoCoOp's ``ctx_init``, e.g. "a photo of a").

    Raises:
        InputError: "template" with a first template that has no words before "{}".
    """
    if not ctx_init:
        return " ".join(["X"] * n_ctx), "."
    if ctx_init != "template":
        return ctx_init.strip(), "."
    template = templates[0] if templates else ""
    prefix, _, suffix = template.partition("{}")
    if "{}" not in template or not prefix.strip():
        raise InputError(
            f"config key 'ctx_init': 'template' needs a first template with words before '{{}}', "
            f"got {template!r}"
        )
    return prefix.strip(), suffix


def prompt_tokens(
    tokenizer: Any, prefix: str, classnames: Sequence[str], suffix: str = "."
) -> tuple[Tensor, int]:
    """Token ids of the prompts "{prefix} {classname}{suffix}" and the number of tokens of ``prefix``.

    The prefix occupies positions 1 .. n of every prompt (after the start-of-text token), which is
    checked; CoOp's prefix is "X X ... X" (one token per X), CoCoOp's is "a photo of a".

    Returns:
        (C, L) token ids and n, the prefix's token count.

    Raises:
        InputError: the tokenizer is not open_clip's CLIP BPE tokenizer, or a prompt does not fit the
            context length (the message names the class).
    """
    if not all(hasattr(tokenizer, a) for a in ("encode", "sot_token_id", "eot_token_id", "context_length")):
        raise InputError(
            f"config key 'encoder.model': prompt learning needs open_clip's CLIP BPE tokenizer, "
            f"not {type(tokenizer).__name__}"
        )
    n_prefix = len(tokenizer.encode(prefix))
    texts = [f"{prefix} {name}{suffix}" for name in classnames]
    length = int(tokenizer.context_length)
    for name, text in zip(classnames, texts, strict=True):
        need = len(tokenizer.encode(text)) + 2  # with the start- and end-of-text tokens
        if need > length:
            raise InputError(
                f"class name {name!r}: the prompt {text!r} needs {need} tokens, "
                f"the text encoder takes {length}"
            )
    tokens = tokenizer(texts)  # (C, L)
    head = tokenizer([prefix])[0, : 1 + n_prefix]  # (1 + n,) start-of-text and the prefix
    bad = (tokens[:, : 1 + n_prefix] != head).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise InputError(f"class name {classnames[bad[0]]!r}: its prompt does not start with {prefix!r}")
    return tokens, n_prefix


class ContextPrompts(nn.Module):
    """C prompts "<sot> [n context slots] {classname}{suffix} <eot>" whose context slots are filled in later.

    The frozen pieces are non-persistent buffers (derived from the frozen CLIP, so never saved):
    ``tokens`` (C, L), ``head`` (C, 1, W) the start-of-text embedding, ``tail`` (C, L - 1 - n, W) the
    embeddings after the slots (class name, ".", end-of-text, padding), and ``init`` (n, W) the
    embeddings of the prefix's own tokens (CoCoOp starts its context from them).

    Args:
        encoder: the frozen open_clip model and its tokenizer.
        prefix: the text standing in the context slots, one slot per token ("X X ... X" for CoOp).
        classnames: the C class names, in label order.
        suffix: the frozen text after each class name ("." by default; see ``context_words``).
    """

    def __init__(self, encoder: Encoder, prefix: str, classnames: Sequence[str], suffix: str = ".") -> None:
        super().__init__()
        model = encoder.model
        check_text_tower(model)
        tokens, n_ctx = prompt_tokens(encoder.tokenizer, prefix, classnames, suffix)
        tokens = tokens.to(encoder.device)  # (C, L)
        with torch.no_grad():
            emb = model.token_embedding(tokens).float()  # (C, L, W)
        self.n_ctx = n_ctx
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("head", emb[:, :1].clone(), persistent=False)  # (C, 1, W)
        self.register_buffer("tail", emb[:, 1 + n_ctx :].clone(), persistent=False)  # (C, L - 1 - n, W)
        self.register_buffer("init", emb[0, 1 : 1 + n_ctx].clone(), persistent=False)  # (n, W)

    def embeddings(self, ctx: Tensor, classes: Tensor | None = None) -> Tensor:
        """Prompt embeddings with ``ctx`` in the context slots.

        Args:
            ctx: (n, W) one context for every prompt, or (N, n, W) one per prompt.
            classes: (N,) the class of each prompt; None = the C classes in label order.

        Returns:
            (N, L, W) token embeddings.
        """
        head, tail = (self.head, self.tail) if classes is None else (self.head[classes], self.tail[classes])
        if ctx.ndim == 2:
            ctx = ctx.unsqueeze(0).expand(head.shape[0], -1, -1)  # (N, n, W)
        return torch.cat([head, ctx.to(head.dtype), tail], dim=1)  # (N, L, W)

    def encode(self, model: nn.Module, ctx: Tensor, classes: Tensor | None = None) -> Tensor:
        """(N, D) unnormalised text features of the prompts with ``ctx`` (see ``embeddings``)."""
        tokens = self.tokens if classes is None else self.tokens[classes]  # (N, L)
        return encode_token_embeddings(model, self.embeddings(ctx, classes), tokens)


class TextCache:
    """Class texts computed without gradients, reused until a trained parameter changes.

    With gradients enabled (training) every call recomputes. Otherwise the value is kept under a key
    made of the module's mode and, for every parameter that requires gradients, its identity,
    device, dtype and in-place version counter: an optimizer step, ``load_trained_state`` (``copy_``)
    or ``.to()`` changes the key, so a cached value never outlives the weights it came from.
    (Writes through ``p.data`` bypass the version counter; update parameters in place under
    ``torch.no_grad()`` instead.)
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Tensor | None = None

    def get(self, module: nn.Module, compute: Callable[[], Tensor]) -> Tensor:
        if torch.is_grad_enabled():
            return compute()
        key = (
            module.training,
            tuple((id(p), p.device, p.dtype, p._version) for p in module.parameters() if p.requires_grad),
        )
        if self._value is None or key != self._key:
            self._value, self._key = compute(), key
        return self._value
