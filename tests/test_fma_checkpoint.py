"""Checkpoints: round trip, the official FMA code's state dicts, format-1 files, files in neither layout."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import FMAConfig
from pipeline.core.errors import InputError
from pipeline.methods.fma.checkpoint import (
    load_any_velocity,
    load_official,
    load_velocity,
    official_to_ours,
    ours_to_official,
    save_velocity,
)
from pipeline.methods.fma.velocity import VelocityNet, timestep_embedding


def _random_net(dim: int = 6, blocks: int = 3, time_scale: float = 1.0, seed: int = 0) -> VelocityNet:
    """A net whose every parameter is random (a fresh net is exactly zero and would prove nothing)."""
    net = VelocityNet(dim, blocks, time_scale=time_scale)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return net.eval()


def _official_velocity(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """u(x, t) computed straight from an official-layout state dict, written from its documented layout:
    time MLP on the unscaled sinusoidal embedding, input_proj, residual blocks (affine in_ln, adaLN
    shift/scale/gate), final layer (LayerNorm without affine, adaLN shift/scale, linear)."""

    def lin(x, name):
        return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def mod(x, shift, scale):
        return x * (1 + scale) + shift

    y = lin(F.silu(lin(timestep_embedding(t), "time_embed.mlp.0")), "time_embed.mlp.2")
    h = lin(x, "input_proj")
    d = h.shape[-1]
    blocks = len({k.split(".")[1] for k in sd if k.startswith("res_blocks.")})
    for i in range(blocks):
        p = f"res_blocks.{i}"
        shift, scale, gate = lin(F.silu(y), f"{p}.adaLN_modulation.1").chunk(3, dim=-1)
        ln = F.layer_norm(h, (d,), sd[f"{p}.in_ln.weight"], sd[f"{p}.in_ln.bias"], eps=1e-6)
        h = h + gate * lin(F.silu(lin(mod(ln, shift, scale), f"{p}.mlp.0")), f"{p}.mlp.2")
    shift, scale = lin(F.silu(y), "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    return lin(mod(F.layer_norm(h, (d,), eps=1e-6), shift, scale), "final_layer.linear")


def test_official_state_dict_loads_with_the_same_velocity(tmp_path):
    net = _random_net()
    official = ours_to_official(net.state_dict())
    assert "res_blocks.2.in_ln.weight" in official and "final_layer.adaLN_modulation.1.bias" in official
    assert "time_embed.mlp.0.weight" in official and "res_blocks.1.mlp.2.bias" in official
    assert official_to_ours(official).keys() == net.state_dict().keys()
    path = tmp_path / "model.pth"
    torch.save(official, path)  # what the official train.py writes: a plain state dict

    loaded = load_official(path)
    assert (loaded.dim, loaded.n_blocks, loaded.time_scale) == (6, 3, 1.0)  # read off the tensors
    x, t = torch.randn(9, 6), torch.rand(9)
    with torch.no_grad():
        expected = net(x, t)
        assert expected.abs().max() > 1e-3
        assert torch.allclose(loaded(x, t), expected, atol=1e-6)
        assert torch.allclose(_official_velocity(official, x, t), expected, atol=1e-5)
    any_net, cfg = load_any_velocity(path)
    assert cfg is None and torch.allclose(any_net(x, t), expected, atol=1e-6)


def test_wrapped_official_state_dict_loads(tmp_path):
    net = _random_net(blocks=2)
    official = {f"module.{k}": v for k, v in ours_to_official(net.state_dict()).items()}  # DataParallel
    torch.save(official, tmp_path / "model.pth")
    x, t = torch.randn(4, 6), torch.rand(4)
    with torch.no_grad():
        assert torch.allclose(load_official(tmp_path / "model.pth")(x, t), net(x, t), atol=1e-6)


def test_round_trip_keeps_velocity_config_and_time_scale(tmp_path):
    net = _random_net(time_scale=1000.0)
    cfg = FMAConfig(blocks=3, time_scale=1000.0, noise="interpolant", interpolant_noise_std=0.2)
    save_velocity(tmp_path / "fma.pt", net, cfg, selected_m=4)
    state = torch.load(tmp_path / "fma.pt", weights_only=True)
    assert (
        state["selected_m"] == 4 and state["time_scale"] == 1000.0 and state["config"]["time_scale"] == 1000.0
    )
    loaded, loaded_cfg = load_velocity(tmp_path / "fma.pt")
    assert loaded_cfg == cfg and loaded.time_scale == 1000.0
    x, t = torch.randn(5, 6), torch.rand(5)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), net(x, t))
    assert load_any_velocity(tmp_path / "fma.pt")[1] == cfg


def test_format_1_checkpoint_loads_as_it_ran(tmp_path):
    """Format 1: DiT time scale 1000, block LayerNorms without affine, one ``noise_scale`` key."""
    net = _random_net(time_scale=1000.0)
    with torch.no_grad():
        for block in net.blocks:  # identity affine: the function of a LayerNorm without parameters
            block.norm.weight.fill_(1.0)
            block.norm.bias.zero_()
    weights = {k: v for k, v in net.state_dict().items() if ".norm." not in k}
    config = {k: v for k, v in dataclasses.asdict(FMAConfig(blocks=3)).items() if k not in ("time_scale",)}
    config.pop("paper_noise_scale")
    config.pop("interpolant_noise_std")
    config.update(noise="interpolant", noise_scale=0.1)
    old = {"state_dict": weights, "config": config, "dim": 6, "blocks": 3, "selected_m": 2, "step_size": 0.1}
    torch.save(old, tmp_path / "old.pt")
    loaded, cfg = load_velocity(tmp_path / "old.pt")
    assert loaded.time_scale == 1000.0 and cfg.time_scale == 1000.0 and cfg.interpolant_noise_std == 0.1
    x, t = torch.randn(5, 6), torch.rand(5)
    with torch.no_grad():
        assert torch.allclose(loaded(x, t), net(x, t), atol=1e-6)


def test_files_in_neither_layout_fail_with_one_line_naming_the_file(tmp_path):
    torch.save({"weights": torch.zeros(3), "epoch": 4}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name in ("other.pt", "text.pt", "missing.pt"):
        for loader in (load_any_velocity, load_official, load_velocity):
            with pytest.raises(InputError) as err:
                loader(tmp_path / name)
            message = str(err.value)
            assert message.startswith(str(tmp_path / name)) and "\n" not in message, message
    with pytest.raises(InputError, match="neither"):
        load_any_velocity(tmp_path / "other.pt")
    net = _random_net()
    torch.save(ours_to_official(net.state_dict()), tmp_path / "official.pth")
    with pytest.raises(InputError, match="load_official"):
        load_velocity(tmp_path / "official.pth")  # points the user at the right loader
    broken = ours_to_official(net.state_dict())
    del broken["res_blocks.1.mlp.0.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(InputError, match="broken.pth: not an official FMA state dict"):
        load_official(tmp_path / "broken.pth")
