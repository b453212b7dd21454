"""r parities per group: the weighted encoder, the target, the decoders, and the recovery of
up to r missing members, each checked against a computation done here independently."""

import json

import numpy as np
import pytest
import torch

from parm_training import cli, code, encoders, train


def test_code_weights_are_parm_cores_vandermonde_rows():
    assert encoders.code_weights(2, 2) == [[1.0, 1.0], [1.0, 2.0]]
    w = np.asarray(encoders.code_weights(4, 3))
    nodes = np.array([1.0, 4 / 3, 5 / 3, 2.0])
    assert np.allclose(w, nodes[None, :] ** np.arange(3)[:, None], rtol=0, atol=1e-15)
    assert encoders.code_weights(1, 2) == [[1.0], [1.0]]
    assert np.allclose(encoders.code_weights(8, 2)[1], 1 + np.arange(8) / 7)


def test_weighted_encoder_is_the_weighted_sum_in_numpy():
    enc = encoders.for_parity("addition", 4, 1, 2)
    g = torch.rand(6, 4, 1, 28, 28)
    # parm-core's nodes: x_i = 1 + i / (k - 1), weight x_i for parity 1 ([1, 4/3, 5/3, 2]).
    want = np.einsum("i,nichw->nchw", 1 + np.arange(4) / 3, g.numpy().astype(np.float64))
    got = enc.encode(g)
    assert got.dtype == torch.float32
    assert np.abs(got.numpy() - want).max() < 1e-6  # summed in f64, rounded once
    assert enc.input_range(4) == (0.0, 6.0)
    # In-graph normalization of E = sum w_i x_i is the weighted sum of the normalized members.
    mean, std = enc.normalization(0.1307, 0.3081, 4)
    weights = torch.tensor(enc.weights, dtype=torch.float32)[None, :, None, None, None]
    assert torch.allclose((got - mean) / std, (weights * (g - 0.1307) / 0.3081).sum(1), atol=1e-5)


def test_parity_zero_is_the_plain_addition_encoder():
    plain = encoders.get("addition")
    assert encoders.for_parity("addition", 2, 0, 2) is plain and encoders.for_parity("addition", 4) is plain
    g, outs = torch.rand(3, 2, 1, 28, 28), torch.randn(3, 2, 10)
    assert torch.equal(plain.encode(g), g.sum(1))
    assert torch.equal(plain.target(outs), outs.sum(1))
    assert torch.equal(plain.decode(outs.sum(1), outs), encoders.decode(outs.sum(1), outs))
    assert plain.input_range(2) == (0.0, 2.0) and plain.normalization(0.1307, 0.3081, 2) == (2 * 0.1307, 0.3081)
    with pytest.raises(ValueError, match="addition"):
        encoders.for_parity("concatenation", 2, 1, 2)
    with pytest.raises(ValueError, match="parities"):
        encoders.for_parity("addition", 2, 2, 2)


def test_weighted_target_and_single_parity_decode():
    enc = encoders.for_parity("addition", 2, 1, 2)  # weights [1, 2]
    outs = torch.randn(5, 2, 10)
    target = enc.target(outs)
    assert torch.allclose(target, outs[:, 0] + 2 * outs[:, 1])
    decoded = enc.decode(target, outs)
    # member 0: Fp - 2 F(X1); member 1: (Fp - F(X0)) / 2
    assert torch.allclose(decoded[:, 0], target - 2 * outs[:, 1], atol=1e-6)
    assert torch.allclose(decoded[:, 1], (target - outs[:, 0]) / 2, atol=1e-6)
    assert torch.allclose(decoded, outs, atol=1e-5)
    # A partial group's first member alone (the other slot zero): its weight is 1.
    assert torch.allclose(enc.decode(outs[:, 0], outs[:, :1])[:, 0], outs[:, 0])


def test_concatenation_k8_tiles_four_rows_of_two():
    g = torch.stack([torch.full((1, 28, 28), float(i)) for i in range(8)])[None]
    g[0, 5, 0, 0:4, 0:2] = torch.tensor([[0.0, 8.0]] * 4)  # one 4x2 block of X6 averages to 4
    p = encoders.get("concatenation").encode(g)[0, 0]
    assert p.shape == (28, 28)
    for i in range(8):
        r, c = divmod(i, 2)
        block = p[7 * r : 7 * r + 7, 14 * c : 14 * c + 14]
        assert torch.all(block[1:] == i) and torch.all(block[:, 1:] == i), i
    assert p[14, 14] == 4.0


def linear_code(k, r, seed=0):
    """A LINEAR stand-in for F (x -> A x) and the exact parity models Fp_j = F: since F is
    linear, F(sum_i w_ji X_i) = sum_i w_ji F(X_i) exactly."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(10, 784)).astype(np.float32)
    f = lambda x: (x.reshape(len(x), -1).astype(np.float64) @ a.T.astype(np.float64)).astype(np.float32)  # noqa: E731
    return f, [f] * r, np.asarray(encoders.code_weights(k, r))


@pytest.mark.parametrize("k", [2, 4])
def test_two_missing_members_are_recovered_exactly_with_a_linear_f(k):
    f, parity_models, w = linear_code(k, 2)
    x = np.random.default_rng(1).random((40, 1, 28, 28), dtype=np.float32)
    groups = train.make_groups(len(x), k, 3)
    outs = f(x)[groups]  # [n, k, C]
    parity_outs = code.parity_outputs(w, parity_models, x, groups)
    # Parity 1's input is the weighted sum, so its output is the weighted sum of F's.
    assert np.allclose(parity_outs[1], np.einsum("i,nic->nc", w[1], outs), atol=1e-3)
    for missing in [(0, 1), (0, k - 1)]:
        got = code.recover(w, parity_outs, outs, missing, (0, 1))
        assert np.allclose(got, outs[:, list(missing)], atol=1e-3)
    # One missing, least squares over both parities, and each parity alone.
    for parities in [(0,), (1,), (0, 1)]:
        assert np.allclose(code.recover(w, parity_outs, outs, (1,), parities)[:, 0], outs[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="only 1 parities"):
        code.recover(w, parity_outs, outs, (0, 1), (1,))


def test_least_squares_averages_the_parities_errors():
    w = np.asarray(encoders.code_weights(2, 2))
    outs = np.zeros((1, 2, 1))
    # Member 0 missing, true output 0; parity 0 off by +1, parity 1 off by -1:
    # B = [1, -1], W[:, 0] = [1, 1] -> least squares 0.
    assert np.allclose(code.recover(w, np.array([[[1.0]], [[-1.0]]]), outs, (0,), (0, 1)), 0.0)
    # Two missing, by hand: [1 1; 1 2] Y = [3, 5] -> Y = [1, 2].
    assert np.allclose(code.recover(w, np.array([[[3.0]], [[5.0]]]), outs, (0, 1), (0, 1))[0, :, 0], [1.0, 2.0])


def test_evaluate_counts_every_pattern_and_is_perfect_for_an_exact_code():
    k, r = 4, 2
    f, parity_models, w = linear_code(k, r)
    x = np.random.default_rng(2).random((80, 1, 28, 28), dtype=np.float32)
    logits = f(x)
    labels = logits.argmax(1)
    groups = train.make_groups(len(x), k, 5)
    rows = code.evaluate(w, parity_models, x, logits, labels, groups)
    assert [(row["missing"], row["parities"]) for row in rows] == [(1, [0]), (1, [1]), (1, [0, 1]), (2, [0, 1])]
    assert [row["reconstructions"] for row in rows] == [80, 80, 80, 6 * 20 * 2]
    assert all(row["agreement_with_base"] == 1.0 and row["reconstruction_top1"] == 1.0 for row in rows)


def test_parity_index_trains_a_weighted_parity_and_records_the_code(tmp_path, mnist):
    out = tmp_path / "models"
    assert cli.main(["base", "--arch", "lenet", "--epochs", "1", "--limit", "300", "--out", str(out)]) == 0
    common = ["parity", "--base", str(out / "mnist-lenet.json"), "--k", "2", "--init-from-base", "--ce-weight", "10",
              "--partial-groups", "0.3", "--epochs", "1", "--limit", "300", "--out", str(out)]
    assert cli.main(common) == 0
    assert cli.main([*common, "--parity-index", "1", "--parities", "2"]) == 0
    plain = json.loads((out / "mnist-lenet-parity-add-k2.json").read_text())
    p1 = json.loads((out / "mnist-lenet-parity-add-k2-r2-p1.json").read_text())
    # Parity 0 (the default): no code fields, as every manifest before.
    assert not {"parity_index", "parities", "weights"} & set(plain)
    assert (p1["parity_index"], p1["parities"], p1["weights"]) == (1, 2, [1.0, 2.0])
    assert p1["input_range"] == [0.0, 3.0] and p1["normalization"]["mean"] == round(3 * 0.1307, 6)
    assert "sum w_i F(Xi)" in p1["training"]["loss"]
    # The reference parity inputs are X_a + 2 X_b of the recorded groups.
    x = mnist.test.floats().reshape(len(mnist.test), -1)
    for (a, b), ref in zip(p1["reference"]["groups"], p1["reference"]["inputs"]):
        assert np.abs(np.asarray(ref) - (x[a] + 2 * x[b])).max() < 1e-5

    result = tmp_path / "code.json"
    assert cli.main(["evaluate-code", "--base", str(out / "mnist-lenet.json"), "--record", "--out", str(result),
                     str(out / "mnist-lenet-parity-add-k2-r2-p1.json"), str(out / "mnist-lenet-parity-add-k2.json")]) == 0
    rows = json.loads(result.read_text())["patterns"]
    assert [(row["missing"], row["parities"], row["reconstructions"]) for row in rows] == [
        (1, [0], 10000), (1, [1], 10000), (1, [0, 1], 10000), (2, [0, 1], 10000)]
    # Parity 0 alone is what parity's own evaluation measured (the same seeded groups).
    assert rows[0]["agreement_with_base"] == plain["accuracy"]["agreement_with_base"]
    assert rows[1]["agreement_with_base"] == p1["accuracy"]["agreement_with_base"]
    recorded = json.loads((out / "mnist-lenet-parity-add-k2-r2-p1.json").read_text())
    assert recorded["accuracy"]["code"]["patterns"] == rows
    assert json.loads((out / "mnist-lenet-parity-add-k2.json").read_text()) == plain
    # A parity 1 checkpoint is not parity 0's.
    ckpt = tmp_path / "p1.npz"
    assert cli.main([*common, "--parity-index", "1", "--parities", "2", "--checkpoint-only", str(ckpt)]) == 0
    assert cli.main(["parity", "--base", str(out / "mnist-lenet.json"), "--k", "2", "--from-checkpoint", str(ckpt),
                     "--out", str(tmp_path / "x")]) == 2
