"""LPIPS: staged offline with checksums, unavailable (never random) without a backbone, and its
plumbing equal to the lpips package run directly with the same fixed backbone."""
import json
import warnings

import pytest
import torch

from cloudsr_hpc.errors import InputError
from cloudsr_hpc.evaluation.perceptual import (
    BACKBONE_FILE,
    LPIPSUnavailable,
    PerceptualMetric,
    stage_backbone,
)
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def fixed_backbone(tmp_path_factory):
    """A seeded (not the official) AlexNet in torchvision's format: a fixed backbone for tests."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.alexnet(weights=None)
    path = tmp_path_factory.mktemp("backbone") / "alexnet-fixed.pth"
    torch.save(net.state_dict(), path)
    return path


def test_without_a_staged_backbone_lpips_is_unavailable_with_the_hint(tmp_path):
    with pytest.raises(LPIPSUnavailable, match="weights stage --from"):
        PerceptualMetric(tmp_path)


def test_staging_checks_the_file_and_labels_an_unofficial_backbone(fixed_backbone, tmp_path):
    with pytest.raises(InputError, match="allow-unofficial"):
        stage_backbone(fixed_backbone, tmp_path)
    assert not (tmp_path / BACKBONE_FILE).exists()  # refused: nothing staged
    bad = tmp_path / "not-alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(InputError, match=r"features\.0\.weight: expected an AlexNet tensor"):
        stage_backbone(bad, tmp_path, allow_unofficial=True)
    man = stage_backbone(fixed_backbone, tmp_path, allow_unofficial=True)
    assert man["official"] is False and json.loads((tmp_path / "lpips_backbone.json").read_text()) == man
    metric = PerceptualMetric(tmp_path)
    assert "UNOFFICIAL" in metric.label
    # a staged file that no longer matches its checksum is refused
    with open(tmp_path / BACKBONE_FILE, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(LPIPSUnavailable, match="checksum"):
        PerceptualMetric(tmp_path)


def test_lpips_plumbing_matches_the_package_with_the_same_backbone(fixed_backbone, tmp_path):
    import lpips
    stage_backbone(fixed_backbone, tmp_path, allow_unofficial=True)
    metric = PerceptualMetric(tmp_path)
    g = torch.Generator().manual_seed(1)
    target = torch.rand(3, 2, 64, 64, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    mask = torch.ones(3, 1, 64, 64)
    sums, counts = metric.per_channel(pred, target, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    state = torch.load(fixed_backbone, weights_only=True)
    ref.net.load_state_dict({f"slice{s}.{i}.{p}": state[f"features.{i}.{p}"]
                             for s, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10))
                             for p in ("weight", "bias")})
    for c in range(2):
        with torch.no_grad():
            want = ref(pred[:, c:c + 1].repeat(1, 3, 1, 1), target[:, c:c + 1].repeat(1, 3, 1, 1)).flatten()
        assert counts[c] == 3
        assert float(sums[c]) == pytest.approx(float(want.double().sum()), rel=1e-5)
    # identical images score 0; a more distorted prediction scores higher
    s0, _ = metric.per_channel(target, target, mask)
    s2, _ = metric.per_channel((target + 0.6 * torch.randn(target.shape, generator=g)).clamp(-1, 1), target,
                               mask)
    assert float(s0.abs().max()) < 1e-6 and bool((s2 > sums).all())


def test_weights_stage_cli_refuses_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a torch file")
    r = run_cli("weights", "stage", "--from", str(bad), "--dir", str(tmp_path / "w"))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "junk.pth" in lines[0] and "not a torch weights file" in lines[0]
    assert not (tmp_path / "w" / BACKBONE_FILE).exists()
