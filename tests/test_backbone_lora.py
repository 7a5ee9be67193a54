"""CLIP-LoRA on the installed open_clip: every attention block wrapped, exact at B = 0, loud otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fresh_encoder
from open_clip.transformer import Transformer
from torch import nn

from pipeline.backbones import recipes
from pipeline.backbones.clip_lora import CLIPLoRA, LoRAAttention, LoRAProjection, attach_lora
from pipeline.core.errors import InputError

NAMES = ["zero", "one", "two"]
TEMPLATES = ["a photo of a {}."]


pytestmark = pytest.mark.usefixtures("one_thread")


def lora(encoders: str = "both", **kw) -> CLIPLoRA:
    torch.manual_seed(0)
    return CLIPLoRA(fresh_encoder(), NAMES, TEMPLATES, recipes.CLIPLoRA(encoders=encoders, **kw), 128).eval()


def randomise_b(backbone: CLIPLoRA) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith("_lora.B"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(("encoders", "vision", "text"), [("both", 4, 3), ("vision", 4, 0), ("text", 0, 3)])
def test_lora_wraps_every_attention_block_of_the_chosen_towers(encoders: str, vision: int, text: int) -> None:
    backbone = lora(encoders)
    model = backbone.clip
    assert model.visual.transformer.layers == 4 and model.transformer.layers == 3
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRAAttention)]
    assert len(wrapped) == vision + text == len(backbone.wrapped)
    assert sorted(wrapped) == sorted(backbone.wrapped)
    assert sum(n.startswith("visual.") for n in wrapped) == vision
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert sum(isinstance(b.attn, nn.MultiheadAttention) for b in blocks) == 7 - vision - text
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == (vision + text) * 1536
    # The frozen attention weights keep their state-dict names.
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in model.state_dict()


def test_lora_refuses_attention_it_cannot_wrap() -> None:
    """open_clip's own Attention class (its main branch's direction) is named in the error."""

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = Transformer(width=32, layers=2, heads=2, block_type="custom")

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = Tower()

    with pytest.raises(InputError, match=r"vision tower .* open_clip\.transformer\.Attention x 2") as err:
        attach_lora(Model(), "vision", 2, 1.0, 0.25)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="no transformer blocks in the text tower"):
        attach_lora(Model(), "text", 2, 1.0, 0.25)


def test_lora_refuses_an_encoder_that_already_carries_lora() -> None:
    backbone = lora()
    with pytest.raises(RuntimeError, match="fresh encoder"):
        attach_lora(backbone.clip, "both", 2, 1.0, 0.25)


def test_lora_attention_computes_multihead_attention_exactly() -> None:
    """Against MultiheadAttention (its reference path: inputs need gradients) up to float rounding."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    mha.requires_grad_(False)
    wrapped = LoRAAttention(mha, 2, 1.0, 0.25).train()
    x = torch.randn(3, 7, 32, requires_grad=True)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    for mask in (None, causal, causal.isinf()):
        out = wrapped(x, x, x, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(
            out, mha(x, x, x, need_weights=False, attn_mask=mask)[0], rtol=0, atol=1e-6
        )
        out, weights = wrapped(x, x, x, attn_mask=mask)
        want, want_weights = mha(x, x, x, attn_mask=mask)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(weights, want_weights, rtol=0, atol=1e-6)
    # Sequence-first cross-attention with a padding mask, and unbatched input.
    mha = nn.MultiheadAttention(32, 4, batch_first=False).requires_grad_(False)
    wrapped = LoRAAttention(mha, 2, 1.0, 0.0)
    q, kv = torch.randn(5, 3, 32), torch.randn(6, 3, 32)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[0, -2:] = True
    torch.testing.assert_close(
        wrapped(q, kv, kv, key_padding_mask=pad)[0], mha(q, kv, kv, key_padding_mask=pad)[0]
    )
    torch.testing.assert_close(wrapped(q[:, 0], kv[:, 0], kv[:, 0])[0], mha(q[:, 0], kv[:, 0], kv[:, 0])[0])


def test_lora_update_is_scaled_by_alpha_over_sqrt_rank() -> None:
    """The official CLIP-LoRA scaling (loralib/layers.py): alpha / sqrt(r), not LoRA's alpha / r."""
    torch.manual_seed(0)
    proj = LoRAProjection(16, 8, rank=4, alpha=2.0, dropout=0.25)
    assert proj.scaling == 2.0 / math.sqrt(4) == 1.0
    assert torch.equal(proj.B, torch.zeros(8, 4))
    bound = 1 / math.sqrt(16)  # kaiming-uniform with a = sqrt(5) on fan_in 16
    assert proj.A.abs().max() <= bound
    with torch.no_grad():
        proj.B.normal_()
    x = torch.randn(5, 16)
    torch.testing.assert_close(proj.eval()(x), x @ (proj.B @ proj.A).T * proj.scaling)


def test_lora_dropout_acts_in_training_only() -> None:
    backbone = lora()
    randomise_b(backbone)
    images = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    backbone.train()
    assert not backbone.clip.training and not backbone.clip.visual.transformer.resblocks[0].attn.training
    assert backbone.clip.visual.transformer.resblocks[0].attn.q_lora.dropout.training
    with torch.no_grad():
        a, b = backbone.encode_images(images), backbone.encode_images(images)
    assert not torch.equal(a, b)
    backbone.eval()
    with torch.no_grad():
        a, b = backbone.encode_images(images), backbone.encode_images(images)
    assert torch.equal(a, b)


def test_lora_texts_follow_the_lora_weights_and_carry_gradients() -> None:
    backbone = lora()
    with torch.no_grad():
        before = backbone.class_texts()
        randomise_b(backbone)
        after = backbone.class_texts()
    assert not torch.allclose(before, after)  # the eval cache saw the weight change
    backbone.train()
    text = backbone.class_texts()
    assert text.requires_grad
    text.sum().backward()
    assert backbone.clip.transformer.resblocks[0].attn.v_lora.A.grad is not None
    with pytest.raises(RuntimeError, match="frozen texts do not apply"):
        backbone.use_texts(before)


def test_lora_with_the_vision_tower_needs_images() -> None:
    with pytest.raises(RuntimeError, match="needs images"):
        lora("vision").adapt_features(torch.randn(2, 128))
    text_only = lora("text")  # the image encoder stays frozen: cached features are its features
    x = torch.randn(2, 128)
    torch.testing.assert_close(text_only.adapt_features(x), torch.nn.functional.normalize(x, dim=-1))
