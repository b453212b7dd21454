import pytest
import torch

from parm_training import encoders


def test_addition_sums_members():
    g = torch.rand(3, 2, 1, 28, 28)
    assert torch.equal(encoders.get("addition").encode(g), g[:, 0] + g[:, 1])
    g4 = torch.rand(2, 4, 1, 28, 28)
    assert torch.allclose(encoders.get("addition").encode(g4), g4.sum(1))


def test_addition_normalization_equals_sum_of_normalized_inputs():
    enc = encoders.get("addition")
    mean, std = enc.normalization(0.1307, 0.3081, 3)
    g = torch.rand(4, 3, 1, 28, 28)
    assert torch.allclose((enc.encode(g) - mean) / std, ((g - 0.1307) / 0.3081).sum(1), atol=1e-5)
    assert enc.input_range(3) == (0.0, 3.0)


def test_concatenation_k2_tiles_half_width_averages():
    g = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(1, 2, 1, 4, 4)
    p = encoders.get("concatenation").encode(g)
    assert p.shape == (1, 1, 4, 4)
    # left half: X1 averaged over horizontal pairs; right half: X2.
    assert torch.equal(p[0, 0, :, :2], (g[0, 0, 0, :, 0::2] + g[0, 0, 0, :, 1::2]) / 2)
    assert torch.equal(p[0, 0, :, 2:], (g[0, 1, 0, :, 0::2] + g[0, 1, 0, :, 1::2]) / 2)


def test_concatenation_k4_tiles_quarters():
    g = torch.stack([torch.full((1, 28, 28), float(i)) for i in range(4)])[None]
    p = encoders.get("concatenation").encode(g)[0, 0]
    assert p.shape == (28, 28)
    assert (p[:14, :14] == 0).all() and (p[:14, 14:] == 1).all()
    assert (p[14:, :14] == 2).all() and (p[14:, 14:] == 3).all()


def test_concatenation_rejects_other_k():
    with pytest.raises(ValueError, match="k = 2, 4 or 8"):
        encoders.get("concatenation").check_k(3)


def test_decode_recovers_each_member_from_an_exact_parity():
    outs = torch.randn(5, 3, 10)
    decoded = encoders.decode(outs.sum(1), outs)
    assert torch.allclose(decoded, outs, atol=1e-5)


def test_unknown_encoder_names_the_known_ones():
    with pytest.raises(ValueError, match="addition"):
        encoders.get("xor")
