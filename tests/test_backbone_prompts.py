"""Prompt-learning plumbing (pipeline.backbones.prompts) and the CoOp / CoCoOp prompts built on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.backbones import recipes
from pipeline.backbones.cocoop import CoCoOp
from pipeline.backbones.coop import CoOp
from pipeline.backbones.encoder import Encoder, encode_texts
from pipeline.backbones.prompts import (
    context_words,
    encode_text_tokens,
    encode_token_embeddings,
    pooled_length,
    prompt_tokens,
    text_width,
)
from pipeline.core.errors import InputError

NAMES = ["zero", "one", "two", "seven"]
DIM = 128


pytestmark = pytest.mark.usefixtures("one_thread")


def coop(encoder: Encoder, cfg: recipes.CoOp | None = None) -> CoOp:
    torch.manual_seed(0)
    return CoOp(encoder, NAMES, [], cfg or recipes.CoOp(), DIM).eval()


def cocoop(encoder: Encoder) -> CoCoOp:
    torch.manual_seed(0)
    return CoCoOp(encoder, NAMES, [], recipes.CoCoOp(), DIM).eval()


def test_text_tower_from_embeddings_is_encode_text(tiny_encoder: Encoder) -> None:
    model = tiny_encoder.model
    tokens = tiny_encoder.tokenizer(
        ["a photo of a zero.", "X X X X seven.", "a much longer prompt than the others"]
    )
    got = encode_token_embeddings(model, model.token_embedding(tokens), tokens)
    # The tower runs on the positions up to the last end-of-text token only (causal: the padding after
    # it reaches nothing that is pooled), so the features agree with the full run to float rounding.
    assert pooled_length(model, tokens) == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    torch.testing.assert_close(got, model.encode_text(tokens), rtol=0, atol=1e-5)
    assert text_width(model) == 128


def test_the_cut_changes_nothing_a_prompt_reads(tiny_encoder: Encoder) -> None:
    """Each prompt's feature is the same encoded alone or beside a longer one (another cut), and
    changing the padding after the end-of-text token changes no feature (the positions are unread)."""
    model = tiny_encoder.model
    short, long = "a photo of a zero.", "a much longer prompt than the others, with more words in it"
    both = tiny_encoder.tokenizer([short, long])
    alone = tiny_encoder.tokenizer([short])
    assert pooled_length(model, alone) < pooled_length(model, both)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text_tokens(model, both)[:1], encode_text_tokens(model, alone), rtol=0, atol=1e-5
        )
        padded = both.clone()
        padded[0, pooled_length(model, alone) :] = 7  # junk after the short prompt's end
        torch.testing.assert_close(
            encode_text_tokens(model, padded)[0], encode_text_tokens(model, both)[0], rtol=0, atol=1e-5
        )


def test_embeddings_get_gradients(tiny_encoder: Encoder) -> None:
    model = tiny_encoder.model
    tokens = tiny_encoder.tokenizer(["a photo of a zero."])
    emb = model.token_embedding(tokens).detach().requires_grad_(True)  # (1, L, W)
    encode_token_embeddings(model, emb, tokens).sum().backward()
    assert emb.grad is not None and emb.grad[0, 1:6].abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_prompt_tokens_put_the_prefix_first(tiny_encoder: Encoder) -> None:
    tok = tiny_encoder.tokenizer
    tokens, n = prompt_tokens(tok, "X X X", NAMES)
    assert n == 3 and tokens.shape == (4, 32)
    assert torch.equal(tokens, tok([f"X X X {c}." for c in NAMES]))
    _, n = prompt_tokens(tok, "a photo of a", NAMES)
    assert n == 4


def test_a_prompt_that_does_not_fit_is_refused(tiny_encoder: Encoder) -> None:
    with pytest.raises(InputError, match="class name 'very long"):
        prompt_tokens(tiny_encoder.tokenizer, " ".join(["X"] * 16), ["zero", "very long " * 8])


def test_coop_prompt_is_the_placeholder_prompt_with_learned_context(tiny_encoder: Encoder) -> None:
    """With its context set to the embedding of "X", CoOp's texts are those of "X X ... X {name}."."""
    backbone = coop(tiny_encoder)
    model = tiny_encoder.model
    tokens = tiny_encoder.tokenizer([" ".join(["X"] * 16) + f" {c}." for c in NAMES])  # (C, L)
    assert torch.equal(backbone.prompts.tokens, tokens)
    with torch.no_grad():
        backbone.ctx.copy_(model.token_embedding(tokens)[0, 1:17])
        want = F.normalize(model.encode_text(tokens), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(backbone.class_texts(), want, rtol=0, atol=1e-6)
    assert backbone.ctx.shape == (16, 128)
    assert 0.015 < float(coop(tiny_encoder).ctx.detach().std()) < 0.025  # N(0, 0.02^2)


def test_coop_texts_carry_gradients_and_the_eval_cache_never_goes_stale(tiny_encoder: Encoder) -> None:
    backbone = coop(tiny_encoder, recipes.CoOp(n_ctx=4))
    text = backbone.class_texts()  # grad enabled: recomputed, differentiable
    assert text.requires_grad and text.shape == (4, 128)
    with torch.no_grad():
        first = backbone.class_texts()
        assert backbone.class_texts() is first  # cached
        state = backbone.trained_state()
        backbone.ctx.add_(0.5)  # an in-place change, like an optimizer step
        moved = backbone.class_texts()
        assert not torch.allclose(moved, first)
        backbone.load_trained_state(state, "test")
        torch.testing.assert_close(backbone.class_texts(), first, rtol=0, atol=0)
    assert backbone.forwards["text"] == 4 * 4  # 4 prompts per computation, 4 computations


def test_prompt_learners_refuse_frozen_texts(tiny_encoder: Encoder) -> None:
    for backbone in (coop(tiny_encoder), cocoop(tiny_encoder)):
        with pytest.raises(RuntimeError, match="learns its class texts"):
            backbone.use_texts(torch.zeros(len(NAMES), DIM))


def test_cocoop_context_starts_from_a_photo_of_a(tiny_encoder: Encoder) -> None:
    """Without the meta-net shift, CoCoOp's prompts are zero-shot CLIP's "a photo of a {}."."""
    backbone = cocoop(tiny_encoder)
    model = tiny_encoder.model
    tokens = tiny_encoder.tokenizer(["a photo of a"])
    assert torch.equal(backbone.ctx.detach(), model.token_embedding(tokens)[0, 1:5])
    with torch.no_grad():
        backbone.meta_net.linear2.weight.zero_()
        backbone.meta_net.linear2.bias.zero_()
    x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0))
    zeroshot = encode_texts(tiny_encoder, NAMES, ["a photo of a {}."])  # (C, D)
    with torch.no_grad():
        texts = backbone.image_class_texts(x)  # (3, C, D)
        torch.testing.assert_close(texts, zeroshot.expand(3, -1, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(backbone.class_texts(), zeroshot, rtol=0, atol=1e-6)


def test_cocoop_texts_are_per_image_and_targets_pick_the_own_class(tiny_encoder: Encoder) -> None:
    backbone = cocoop(tiny_encoder)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, DIM, generator=gen)
    y = torch.tensor([3, 0, 2, 2, 1])
    with torch.no_grad():
        texts = backbone.image_class_texts(x)  # (5, C, D)
        assert texts.shape == (5, 4, DIM) and not torch.allclose(texts[0], texts[1])
        torch.testing.assert_close(texts.norm(dim=-1), torch.ones(5, 4))
        torch.testing.assert_close(backbone.target_texts(x, y), texts[torch.arange(5), y], rtol=0, atol=1e-6)
        logits = backbone.logits(x)
        cosines = torch.einsum("bd,bcd->bc", F.normalize(x, dim=-1), texts)
        torch.testing.assert_close(logits, backbone.logit_scale * cosines)
    assert backbone.forwards["text"] == 5 * 4 + 5 + 5 * 4
    backbone.train()
    loss = backbone.loss(x, y)
    loss.backward()
    assert backbone.ctx.grad is not None and backbone.meta_net.linear1.weight.grad is not None
    assert not backbone.clip.training  # the frozen CLIP stays in eval mode while the method trains


@pytest.mark.parametrize(
    ("ctx_init", "templates", "want"),
    [
        ("", [], ("X X X", ".")),
        ("a photo of a", ["ignored {}."], ("a photo of a", ".")),
        ("template", ["a photo of the digit {}."], ("a photo of the digit", ".")),
        ("template", ["a photo of a {}, a type of clothing."], ("a photo of a", ", a type of clothing.")),
    ],
)
def test_context_words(ctx_init: str, templates: list[str], want: tuple[str, str]) -> None:
    assert context_words(ctx_init, 3, templates) == want


def test_context_from_a_template_without_words_before_the_class_is_refused() -> None:
    with pytest.raises(InputError, match="ctx_init"):
        context_words("template", 3, ["{} texture."])


@pytest.mark.parametrize("template", ["a photo of the digit {}.", "a photo of a {}, a type of clothing."])
def test_template_context_starts_at_the_zero_shot_texts(tiny_encoder: Encoder, template: str) -> None:
    """ctx_init 'template': before training, CoOp's and CoCoOp's class texts are the zero-shot ones."""
    want = encode_texts(tiny_encoder, NAMES, [template])
    torch.manual_seed(0)
    learner = CoOp(tiny_encoder, NAMES, [template], recipes.CoOp(ctx_init="template"), DIM).eval()
    with torch.no_grad():
        assert torch.allclose(learner.class_texts(), want, atol=1e-5)
    torch.manual_seed(0)
    conditional = CoCoOp(tiny_encoder, NAMES, [template], recipes.CoCoOp(ctx_init="template"), DIM).eval()
    with torch.no_grad():  # the meta-net shifts the context: compare with its shift removed
        conditional.meta_net.linear2.weight.zero_()
        conditional.meta_net.linear2.bias.zero_()
        got = conditional.image_class_texts(F.normalize(torch.randn(2, DIM), dim=-1))
    assert torch.allclose(got, want.expand(2, -1, -1), atol=1e-5)
