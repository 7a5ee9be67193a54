"""Velocity net: zero at init, the official layout (affine block LayerNorm), the time embedding and scale."""

import torch

from pipeline.methods.fma.velocity import DIT_TIME_SCALE, VelocityNet, timestep_embedding


def test_fresh_net_returns_exactly_zero():
    torch.manual_seed(0)
    net = VelocityNet(dim=12, blocks=3)
    u = net(torch.randn(7, 12), torch.rand(7))
    assert u.shape == (7, 12)
    assert torch.equal(u, torch.zeros(7, 12))


def test_output_shape_and_nonzero_after_one_step():
    torch.manual_seed(0)
    net = VelocityNet(dim=8, blocks=2)
    x, t, target = torch.randn(16, 8), torch.rand(16), torch.randn(16, 8)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = (net(x, t) - target).pow(2).sum(-1).mean()
    loss.backward()
    opt.step()
    u = net(x, t)
    assert u.shape == (16, 8)
    assert u.abs().max() > 0


def test_defaults_are_the_official_layout():
    net = VelocityNet(dim=8)
    assert len(net.blocks) == 12 and net.time_scale == 1.0
    for block in net.blocks:  # official ResBlock.in_ln: LayerNorm(D, eps=1e-6) with affine parameters
        assert block.norm.elementwise_affine and block.norm.eps == 1e-6
        assert torch.equal(block.norm.weight, torch.ones(8)) and torch.equal(block.norm.bias, torch.zeros(8))
    assert not net.final.norm.elementwise_affine and net.final.norm.eps == 1e-6
    assert sum(p.numel() for p in net.parameters()) == (
        (256 * 8 + 8) + (8 * 8 + 8)  # time MLP
        + (8 * 8 + 8)  # input
        + 12 * (2 * 8 + 2 * (8 * 8 + 8) + (8 * 24 + 24))  # blocks: LN, MLP, modulation
        + (8 * 16 + 16) + (8 * 8 + 8)  # final modulation and linear
    )  # fmt: skip


def test_time_embedding_and_scale():
    emb = timestep_embedding(torch.tensor([0.0, 500.0]), dim=256)
    assert emb.shape == (2, 256)
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    assert torch.isclose(emb[1, 0], torch.cos(torch.tensor(500.0)))
    assert torch.isclose(emb[1, 128], torch.sin(torch.tensor(500.0)))
    t = torch.tensor([0.25, 0.7])
    official = VelocityNet(dim=8, blocks=1)
    dit = VelocityNet(dim=8, blocks=1, time_scale=DIT_TIME_SCALE)
    dit.load_state_dict(official.state_dict())
    mlp = official.time.mlp
    assert torch.allclose(official.time(t), mlp(timestep_embedding(t)))  # t unscaled (official code)
    assert torch.allclose(dit.time(t), mlp(timestep_embedding(1000 * t)))  # DiT's 1000 t


def test_modulation_and_output_zeroed_time_mlp_small():
    net = VelocityNet(dim=8, blocks=2)
    for block in net.blocks:
        assert not block.modulation[-1].weight.any()
    assert not net.final.linear.weight.any() and not net.final.modulation[-1].weight.any()
    assert net.time.mlp[0].weight.std() < 0.05
    assert net.input.weight.any() and not net.input.bias.any()
