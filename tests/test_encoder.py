"""open_clip loading (random init, local checkpoint, bad names) and image/text encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbones.encoder import build_train_transform, encode_images, encode_texts, load_encoder
from pipeline.core.config import EncoderConfig
from pipeline.core.errors import InputError

CPU = torch.device("cpu")
TINY = EncoderConfig(model="demo-vit-t-28", pretrained=None)


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(TINY, CPU)


def test_random_init_is_seeded_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    a = load_encoder(TINY, CPU)
    b = load_encoder(TINY, CPU)
    assert "NO PRETRAINED WEIGHTS" in caplog.text
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not any(p.requires_grad for p in a.model.parameters())
    assert not a.model.training


def test_features_are_normalised(encoder) -> None:
    images = torch.randn(5, 3, encoder.image_size, encoder.image_size)
    x = encode_images(encoder, images)
    assert x.shape == (5, 128) and x.dtype == torch.float32
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(5))
    z = encode_texts(encoder, ["cat", "dog", "bird"], ["a photo of a {}.", "a {}."])
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))


def test_template_ensemble_is_mean_of_normalised_embeddings(encoder) -> None:
    names = ["cat", "dog"]
    one = encode_texts(encoder, names, ["a photo of a {}."])
    two = encode_texts(encoder, names, ["a {}."])
    both = encode_texts(encoder, names, ["a photo of a {}.", "a {}."])
    expected = torch.nn.functional.normalize(one + two, dim=-1)
    torch.testing.assert_close(both, expected)


def test_bad_templates_are_refused(encoder) -> None:
    with pytest.raises(InputError, match="templates"):
        encode_texts(encoder, ["cat"], ["no placeholder"])


def test_local_checkpoint_round_trip(encoder, tmp_path: Path) -> None:
    """A state dict saved to disk loads through open_clip's own pretrained= path, same features."""
    path = tmp_path / "demo.pt"
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in encoder.model.state_dict().items()
    }
    torch.save(state, path)
    loaded = load_encoder(EncoderConfig(model=TINY.model, pretrained=str(path)), CPU)
    for name, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, state[name])


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (EncoderConfig(model="no-such-arch"), "encoder.model"),
        (EncoderConfig(model="demo-vit-t-28", pretrained="missing/dir/ckpt.pt"), "missing/dir/ckpt.pt"),
    ],
)
def test_bad_encoder_config(cfg: EncoderConfig, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        load_encoder(cfg, CPU)


def test_corrupt_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="encoder.pretrained") as err:
        load_encoder(EncoderConfig(model=TINY.model, pretrained=str(path)), CPU)
    assert "\n" not in str(err.value)


def test_train_transform_is_random_but_seedable(encoder) -> None:
    from PIL import Image

    image = Image.fromarray((torch.rand(16, 16) * 255).byte().numpy())
    augment = build_train_transform(encoder, (0.08, 1.0), hflip=True)
    torch.manual_seed(0)
    a = augment(image)
    torch.manual_seed(0)
    b = augment(image)
    c = augment(image)
    assert a.shape == (3, 28, 28)
    assert torch.equal(a, b) and not torch.equal(a, c)
