import torch

from pipeline.methods.fma.velocity import VelocityNet, timestep_embedding


def test_fresh_net_returns_exactly_zero():
    torch.manual_seed(0)
    net = VelocityNet(dim=12, blocks=3)
    x = torch.randn(7, 12)
    t = torch.rand(7)
    u = net(x, t)
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


def test_layer_count_and_time_embedding():
    net = VelocityNet(dim=8, blocks=4)
    assert len(net.blocks) == 4
    emb = timestep_embedding(torch.tensor([0.0, 500.0]), dim=256)
    assert emb.shape == (2, 256)
    # t = 0: cosine half is 1, sine half is 0
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    # first frequency is 1: cos(500) and sin(500)
    assert torch.isclose(emb[1, 0], torch.cos(torch.tensor(500.0)))
    assert torch.isclose(emb[1, 128], torch.sin(torch.tensor(500.0)))


def test_modulation_and_output_zeroed_time_mlp_small():
    net = VelocityNet(dim=8, blocks=2)
    for block in net.blocks:
        assert not block.modulation[-1].weight.any()
    assert not net.final.linear.weight.any() and not net.final.modulation[-1].weight.any()
    assert net.time.mlp[0].weight.std() < 0.05
    assert net.input.weight.any() and not net.input.bias.any()
