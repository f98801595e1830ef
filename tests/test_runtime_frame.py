"""nldsl/runtime/frame.py: batch dims, the head split and merge (docs/language.md, "Heads"),
and alignment for elementwise ops. Values are aranges, so every check is exact."""
from __future__ import annotations

import pytest
import torch

from nldsl.runtime.frame import Frame

B, T, H, D = 2, 3, 4, 5


def arange(*shape):
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)


@pytest.mark.parametrize("frame, nb", [(Frame(1), 1), (Frame(2), 2), (Frame(1, H), 2),
                                       (Frame(2, H), 3), (Frame(2, 1), 3)],
                         ids=["token", "sequence", "token-heads", "sequence-heads", "one-head"])
def test_batch_dims_rank_and_lift(frame, nb):
    assert frame.nb == nb
    w = arange(6, 7)
    lifted = frame.lift(w)
    assert lifted.shape == (1,) * nb + (6, 7) and torch.equal(lifted.reshape(6, 7), w)
    assert frame.rank(lifted) == 2
    assert frame.rank(3.0) == 0


@pytest.mark.parametrize("prefix", [1, 2], ids=["token", "sequence"])
def test_split_is_the_h_d_channel_split(prefix):
    """Head h of a [.., 1, H*d] value is channels h*d .. (h+1)*d - 1 (fla's '(h d)')."""
    frame = Frame(prefix, H)
    batch = (B, T)[:prefix]
    value = arange(*batch, 1, H * D)
    split = frame.split(value)
    assert split.shape == batch + (H, D)
    for h in range(H):
        assert torch.equal(split[..., h, :], value[..., 0, h * D:(h + 1) * D])
    assert frame.is_split(split) and not frame.is_split(value)


def test_split_a_matrix_value():
    """A rank-2 value [B, 1, R, H*d] splits its last dim: [B, H, R, d]."""
    frame = Frame(1, H)
    value = arange(B, 1, 3, H * D)
    split = frame.split(value)
    assert split.shape == (B, H, 3, D)
    assert torch.equal(split[:, 2], value[:, 0, :, 2 * D:3 * D])


def test_width_h_is_one_scalar_per_head():
    frame = Frame(2, H)
    gate = arange(B, T, 1, H)
    split = frame.split(gate)
    assert split.shape == (B, T, H) and frame.rank(split) == 0
    assert torch.equal(split, gate[:, :, 0])


@pytest.mark.parametrize("value, why", [
    (arange(B, 1, 7), "width-not-a-multiple"),
    (arange(B, H, D), "already-split"),
    (arange(B, 1), "rank-0"),
    (2.5, "number"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_split_leaves_alone(value, why):
    frame = Frame(1, H)
    out = frame.split(value)
    assert out is value or torch.equal(out, value)


def test_one_head_never_splits():
    frame = Frame(1, 1)
    value = arange(B, 1, D)
    assert frame.split(value) is value and not frame.is_split(value)


@pytest.mark.parametrize("prefix", [1, 2], ids=["token", "sequence"])
def test_one_head_gate_is_a_scalar(prefix):
    """With heads 1, a gate of width H = 1 is one scalar per head, as for H > 1 (it stayed a
    width-1 vector, so the chunked schedule fell back to the token loop for every heads-1
    DeltaNet)."""
    frame = Frame(prefix, 1)
    batch = (B, T)[:prefix]
    gate = arange(*batch, 1, 1)
    split = frame.split(gate)
    assert split.shape == batch + (1,) and frame.rank(split) == 0
    matrix = arange(*batch, 1, 3, 1)                 # a rank-2 value of width 1 stays
    assert frame.split(matrix) is matrix


@pytest.mark.parametrize("prefix", [1, 2], ids=["token", "sequence"])
def test_merge_inverts_split(prefix):
    frame = Frame(prefix, H)
    batch = (B, T)[:prefix]
    value = arange(*batch, 1, H * D)
    merged = frame.merge(frame.split(value), Frame(prefix))
    assert torch.equal(merged, value.squeeze(prefix))
    gate = arange(*batch, 1, H)
    assert torch.equal(frame.merge(frame.split(gate), Frame(prefix)), gate.squeeze(prefix))


def test_merge_an_unsplit_value_drops_the_head_axis():
    frame = Frame(1, H)
    value = arange(B, 1, D)
    assert torch.equal(frame.merge(value, Frame(1)), value[:, 0])


def test_merge_into_a_per_head_frame_is_unsplit_there():
    value = arange(B, H * D)
    into = Frame(1, 3)
    seen = Frame(1).merge(value, into)
    assert seen.shape == (B, 1, H * D) and not into.is_split(seen)
    assert Frame(1).merge(1.5, into) == 1.5


def test_merge_between_head_frames():
    """A read of a level with H heads, seen from a level with 3 heads: merged to H*d, then
    unsplit (size-1 head axis) in the other frame."""
    split = arange(B, H, D)
    seen = Frame(1, H).merge(split, Frame(1, 3))
    assert seen.shape == (B, 1, H * D)
    assert torch.equal(seen[:, 0, D:2 * D], split[:, 1])


def test_align_pads_value_dims_on_the_left_of_the_value():
    """Elementwise ops broadcast value dims right-aligned, batch dims left-aligned: a per-token
    scalar [B] times a matrix value [B, R, C] -> [B, 1, 1] * [B, R, C]."""
    frame = Frame(1)
    scalar, matrix = arange(B), arange(B, 3, 4)
    a, b = frame.align(scalar, matrix)
    assert a.shape == (B, 1, 1) and b is matrix
    assert torch.equal((a * b)[1], scalar[1] * matrix[1])
    b2, a2 = frame.align(matrix, scalar)
    assert a2.shape == (B, 1, 1) and b2 is matrix


def test_align_splits_an_unsplit_operand_against_a_split_one():
    frame = Frame(1, H)
    split = frame.split(arange(B, 1, H * D))
    unsplit = arange(B, 1, H * D) + 100
    a, b = frame.align(split, unsplit)
    assert a.shape == b.shape == (B, H, D)
    assert torch.equal(b, frame.split(unsplit))


def test_align_keeps_a_per_head_width_parameter():
    """A [d] parameter (o_norm) next to a split [B, H, d] value broadcasts over the heads: it
    is not split, even when d is a multiple of H."""
    frame = Frame(1, 2)
    value = frame.split(arange(B, 1, 2 * 4))          # [B, 2, 4]
    scale = frame.lift(arange(4) + 1)                  # [1, 1, 4]; 4 % 2 == 0
    a, b = frame.align(value, scale)
    assert b.shape == (1, 1, 4)
    assert torch.equal((a * b)[:, 1], value[:, 1] * (arange(4) + 1))


def test_align_a_gate_with_a_split_vector():
    """A per-head scalar [B, H] times a per-head vector [B, H, d]: [B, H, 1] * [B, H, d]."""
    frame = Frame(1, H)
    gate = frame.split(arange(B, 1, H))
    vector = frame.split(arange(B, 1, H * D))
    g, v = frame.align(gate, vector)
    assert g.shape == (B, H, 1)
    assert torch.equal((g * v)[1, 2], gate[1, 2] * vector[1, 2])


def test_align_numbers_pass_through():
    frame = Frame(1)
    assert frame.align(2.0, 3.0) == (2.0, 3.0)
    value = arange(B, 3)
    assert frame.align(2.0, value) == (2.0, value)


def test_vector_sees_a_per_head_scalar_as_width_one():
    """Where a vector is needed (a memory's input, outer, a last-dim function), one scalar per
    head [B, H] is a vector of width 1 [B, H, 1]: with head_dim 1 the use decides."""
    frame = Frame(1, H)
    scalar = frame.split(arange(B, 1, H))                 # [B, H]
    vector = frame.vector(scalar)
    assert vector.shape == (B, H, 1) and torch.equal(vector[..., 0], scalar)
    split = frame.split(arange(B, 1, H * D))
    assert frame.vector(split) is split
    assert frame.vector(2.5) == 2.5
    plain = arange(B)
    assert Frame(1).vector(plain) is plain                 # no heads: nothing to decide


@pytest.mark.parametrize("heads", [1, H], ids=["one-head", "heads"])
def test_split_as_follows_the_recorded_width(heads):
    """HeadSplit(name, H, 1) is H heads of width 1, HeadSplit(name, H, None) one scalar per
    head: the same width H * 1, told apart by the lowering, not by the runtime."""
    frame = Frame(1, heads)
    value = arange(B, 1, heads)
    as_vector = frame.split_as(value, heads, 1)
    as_scalar = frame.split_as(value, heads, None)
    assert as_vector.shape == (B, heads, 1) and frame.rank(as_vector) == 1
    assert as_scalar.shape == (B, heads) and frame.rank(as_scalar) == 0
    assert torch.equal(as_vector[..., 0], as_scalar)
    again = frame.split_as(as_vector, heads, 1)          # an already split value stays
    assert again.shape == as_vector.shape and torch.equal(again, as_vector)


def test_merge_of_one_head_scalar_keeps_its_width():
    """One scalar per head of a heads-1 level is seen outside as width 1 (not as a number)."""
    scalar = arange(B, 1)
    assert Frame(1, 1).merge(scalar, Frame(1)).shape == (B, 1)
    assert Frame(2, 1).merge(arange(B, T, 1), Frame(2)).shape == (B, T, 1)
