"""The residual-shift diffusion maths, position-keyed noise and the UNet's mask handling."""
import math

import pytest
import torch

from cloudsr_hpc.models.diffusion import GlobalNoise, ResShift, eta_schedule
from cloudsr_hpc.models.network import ConditionalUNet
from cloudsr_hpc.schema import DiffusionConfig, ModelConfig


def test_schedule_endpoints_monotone_and_geometric_in_sqrt():
    eta = eta_schedule(15, 0.04 ** 2, 0.99, power=1.0)
    assert eta[0].item() == pytest.approx(0.04 ** 2) and eta[-1].item() == pytest.approx(0.99)
    assert torch.all(eta[1:] > eta[:-1])
    r = eta[1:].sqrt() / eta[:-1].sqrt()
    assert torch.allclose(r, r[0].expand_as(r))  # geometric with power 1
    assert eta_schedule(1, 0.04 ** 2, 0.99, 0.3).tolist() == [0.99]


def test_forward_marginal_mean_and_variance():
    d = ResShift.from_config(DiffusionConfig(steps=4, kappa=2.0))
    g = torch.Generator().manual_seed(0)
    x0, y = torch.full((200000,), 0.3, dtype=torch.float64), torch.full((200000,), -0.5, dtype=torch.float64)
    for t in (1, 3, 4):
        tt = torch.full((200000,), t)
        xt = d.q_sample(x0, y, tt, torch.randn(200000, generator=g, dtype=torch.float64))
        eta = d.eta[t - 1].item()
        assert xt.mean().item() == pytest.approx(0.3 + eta * (-0.8), abs=0.01)
        assert xt.var().item() == pytest.approx(4.0 * eta, rel=0.02)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x0) from the product of q(x_{t-1}|x0) and the one-step transition."""
    d = ResShift.from_config(DiffusionConfig(steps=5, kappa=1.5))
    x0, y, xt = 0.2, -0.7, 0.1
    for t in range(2, 6):
        eta, prev = d.eta[t - 1].item(), d.eta[t - 2].item()
        alpha = eta - prev
        # q(x_{t-1}|x0,y) = N(x0 + prev (y-x0), k^2 prev); q(x_t|x_{t-1},y) = N(x_{t-1} + alpha (y-x0), k^2
        # alpha)
        m1, v1 = x0 + prev * (y - x0), d.kappa ** 2 * prev
        v2 = d.kappa ** 2 * alpha
        var = 1 / (1 / v1 + 1 / v2)
        mean = var * (m1 / v1 + (xt - alpha * (y - x0)) / v2)
        m, v = d.posterior(torch.tensor([xt], dtype=torch.float64), torch.tensor([x0], dtype=torch.float64),
                           torch.tensor([t]))
        assert m.item() == pytest.approx(mean, rel=1e-9) and v.item() == pytest.approx(var, rel=1e-9)
    m, v = d.posterior(torch.tensor([xt], dtype=torch.float64), torch.tensor([x0], dtype=torch.float64),
                       torch.tensor([1]))
    assert m.item() == pytest.approx(x0) and v.item() == 0.0  # the last step lands on x0


def test_sampler_with_one_step_is_one_x0_prediction():
    d = ResShift.from_config(DiffusionConfig(steps=1, kappa=1.0))
    y = torch.randn(2, 3, 8, 8)
    eps = torch.randn_like(y)
    seen = []

    def denoise(x, y_, t):
        seen.append((x.clone(), t.clone()))
        return 0.5 * x + 0.1

    out = d.sample(denoise, y, lambda k: eps)
    assert len(seen) == 1 and seen[0][1].tolist() == [1, 1]
    assert torch.allclose(seen[0][0], y + math.sqrt(0.99) * eps)
    assert torch.allclose(out, 0.5 * (y + math.sqrt(0.99) * eps) + 0.1)


def test_sampler_is_deterministic_given_the_noise_source():
    d = ResShift.from_config(DiffusionConfig(steps=4))
    y = torch.randn(1, 2, 16, 16)
    noise = GlobalNoise(11)

    def nz(k):
        return noise.batch(k, 2, [(40, 80)], 16, 16)

    def denoise(x, y_, t):
        return 0.8 * x + 0.2 * y_

    a, b = d.sample(denoise, y, nz), d.sample(denoise, y, nz)
    assert torch.equal(a, b)
    c = d.sample(denoise, y, lambda k: GlobalNoise(12).batch(k, 2, [(40, 80)], 16, 16))
    assert not torch.equal(a, c)


def test_global_noise_is_identical_where_crops_overlap():
    n = GlobalNoise(5)
    a = n.field(3, 4, 1000, 2000, 48, 64)
    b = n.field(3, 4, 1016, 2040, 48, 64)
    assert torch.equal(a[:, 16:, 40:], b[:, :32, :24])
    assert not torch.equal(n.field(2, 4, 1000, 2000, 8, 8), n.field(3, 4, 1000, 2000, 8, 8))  # per step
    assert not torch.equal(a[0], a[1])  # per channel
    big = n.field(0, 1, 0, 0, 256, 256).flatten().double()
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02
    assert abs(torch.corrcoef(torch.stack([big[:-1], big[1:]]))[0, 1].item()) < 0.02  # white


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = ConditionalUNet(3, ModelConfig(base_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                                         attention_levels=[1])).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.05)  # as if trained: the residual head is live
    return net


def test_unet_shapes_and_timestep_dependence(net):
    x, y = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    m = torch.ones(2, 1, 32, 32)
    with torch.no_grad():
        o1 = net(x, y, torch.tensor([1, 1]), m)
        o4 = net(x, y, torch.tensor([4, 4]), m)
    assert o1.shape == (2, 3, 32, 32) and not torch.allclose(o1, o4)


def test_invalid_pixels_never_reach_valid_ones(net):
    """NaN / garbage under the mask changes nothing in the valid pixels' output."""
    x, y = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    m = torch.ones(1, 1, 32, 32)
    m[..., :, 20:] = 0
    x2, y2 = x.clone(), y.clone()
    x2[..., :, 20:] = float("nan")
    y2[..., :, 20:] = 1e6
    with torch.no_grad():
        a = net(torch.nan_to_num(x2) * m, y2 * m, torch.tensor([2]), m)
        b = net(x * m, y * m, torch.tensor([2]), m)
        c = net(x2.nan_to_num(0.0), y2, torch.tensor([2]), m)  # raw garbage in: the net masks it itself
    assert torch.isfinite(c).all()
    assert torch.allclose(a, b) and torch.allclose(c[..., :20], b[..., :20], atol=1e-5)
    assert (c[..., 20:] == 0).all()


def test_untrained_network_predicts_the_condition():
    torch.manual_seed(0)
    net = ConditionalUNet(2, ModelConfig(base_channels=8, channel_mult=[1, 2]))
    y = torch.randn(1, 2, 16, 16)
    m = torch.ones(1, 1, 16, 16)
    with torch.no_grad():
        out = net(torch.randn(1, 2, 16, 16), y, torch.tensor([3]), m)
    assert torch.equal(out, y)  # zero-initialised residual head: starts at bicubic, learns the rest


def test_network_is_translation_equivariant_away_from_borders():
    """No image-wide statistics: a crop (aligned to the network's stride) computes what the whole does."""
    torch.manual_seed(1)
    net = ConditionalUNet(2, ModelConfig(base_channels=8, channel_mult=[1, 2], num_res_blocks=1)).eval()
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    x, y = torch.randn(1, 2, 192, 192), torch.randn(1, 2, 192, 192)
    m = torch.ones(1, 1, 192, 192)
    t = torch.tensor([2])
    with torch.no_grad():
        whole = net(x, y, t, m)
        crop = net(x[..., 32:160, 32:160], y[..., 32:160, 32:160], t, m[..., 32:160, 32:160])
    # beyond the receptive-field margin (~24 px here) the crop matches the whole to float rounding
    assert torch.allclose(crop[..., 32:96, 32:96], whole[..., 64:128, 64:128], atol=1e-6)
    assert not torch.allclose(crop[..., :4, :4], whole[..., 32:36, 32:36], atol=1e-3)  # borders differ
