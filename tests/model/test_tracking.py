"""Alignment-tracked decoding (model/tracking.py): the prior, the position it follows, the pushes
where attention sticks, no EOS before the end of the text, and cached == uncached."""

from __future__ import annotations

import pytest
import torch

from model.decode_cache import decoders_for
from model.generation import generate
from model.tracking import (
    AlignSpec,
    AlignState,
    TrackingParams,
    alignment_report,
    tracking_bias,
    tracking_params,
)
from tests.model.test_generation import MAX_LEN, assert_varied, make_batch, make_model

P = TrackingParams(back=1, forward=2, slope=2.0, max_jump=1, stuck_steps=3, end_slack=1)


def test_prior_is_flat_in_its_band_and_falls_by_slope_per_position_beyond():
    bias = tracking_bias(torch.tensor([3]), 8, P)[0]
    assert bias.tolist() == [-4.0, -2.0, 0.0, 0.0, 0.0, 0.0, -2.0, -4.0]


def test_thresholds_come_from_the_training_datas_tokens_per_symbol():
    p = tracking_params({"min_tokens_per_text_token": 0.4, "max_tokens_per_text_token": 5.2})
    assert p.max_jump == 3  # ceil(1 / 0.4): a fast text needs to move 3 symbols a step
    assert p.stuck_steps == 16  # ceil(3 x 5.2)
    assert tracking_params(None).max_jump == 1
    with pytest.raises(ValueError, match="stuck_steps"):
        TrackingParams(stuck_steps=0).check()


def _state(src_lens) -> AlignState:
    return AlignState(AlignSpec(tracking=P), len(src_lens), torch.device("cpu")).load(torch.tensor(src_lens))


def _peaked(at: list[int], S: int) -> torch.Tensor:
    attn = torch.full((len(at), S), 0.01)
    attn[torch.arange(len(at)), torch.tensor(at)] = 1.0
    return attn


def test_position_follows_the_peak_forward_only_and_at_most_max_jump_a_step():
    st = _state([10, 10])
    trail = []
    for peaks in ([0, 5], [2, 0], [1, 9], [4, 3]):  # row 1 jumps ahead, then back
        st.update(_peaked(peaks, 10))
        trail.append(st.pos.tolist())
    assert [p[0] for p in trail] == [0, 1, 1, 2]  # 2 is reached one step at a time, 1 after is ignored
    assert [p[1] for p in trail] == [1, 1, 2, 3]  # never back, never more than one a step


def test_a_position_the_attention_sticks_on_is_pushed_on_after_stuck_steps():
    st = _state([6])
    trail = []
    for _ in range(7):
        st.update(_peaked([0], 6))  # the attention never leaves the first symbol
        trail.append(int(st.pos))
    assert trail == [0, 0, 1, 1, 1, 2, 2]  # pushed on after 3 steps at one position (stuck_steps)


def test_position_never_passes_the_last_symbol_and_eos_waits_for_it():
    st = _state([4, 2])
    assert st.may_stop().tolist() == [False, True]  # a 2-symbol text is at its end (slack 1) at once
    for _ in range(10):
        st.update(_peaked([3, 1], 6))  # peaks beyond row 1's text are clamped to its last symbol
    assert st.pos.tolist() == [3, 1] and st.may_stop().all()


def test_alignment_report_counts_coverage_and_backward_jumps():
    peaks = torch.tensor([0, 0, 1, 2, 2, 0, 3, 4, 4])
    r = alignment_report(peaks, 9, 6)
    assert r["coverage"] == pytest.approx(5 / 6) and r["backward_jumps"] == 1 and r["end"]
    assert alignment_report(peaks, 3, 6) == {"coverage": pytest.approx(2 / 6), "backward_jumps": 0, "end": False}


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_tracking_gives_the_same_tokens_cached_and_uncached(backend):
    model = make_model(f"model.attention_backend={backend}")
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.0, tracking=P)
    a = generate(model, spk, texts, lens, use_cache=True, **kw)
    b = generate(model, spk, texts, lens, use_cache=False, **kw)
    assert_varied(a.tokens)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    assert torch.equal(a.attended, b.attended)
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert not torch.equal(plain.tokens, a.tokens)  # the prior changes what the decoder attends to
    assert plain.attended is None


def test_no_row_stops_before_its_attention_reaches_the_end_of_its_text():
    model = make_model()
    with torch.no_grad():
        model.head.bias[model.eos_id] = 50.0  # a model that always wants to stop at once
    spk, texts, lens = make_batch((12, 7, 3))
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert (plain.lengths == 0).all()
    tracked = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, tracking=P)
    # One symbol a step at most (max_jump 1), so reaching symbol S_b - 1 - slack takes S_b - 2
    # updates: the earliest stop is step S_b - 3.
    assert (tracked.lengths >= lens - 3).all() and (tracked.lengths >= 9)[0]
    assert not tracked.hit_max_length.any()  # and then it does stop


def test_recorded_peaks_are_the_same_whether_or_not_tracking_could_have_changed_them():
    model = make_model()
    spk, texts, lens = make_batch()
    rec = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, record_alignment=True)
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert torch.equal(rec.tokens, plain.tokens)  # recording observes, it does not steer
    assert rec.attended.shape == rec.tokens.shape and (rec.attended < lens[:, None]).all()


def test_reused_decode_state_restarts_tracking(monkeypatch):
    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.0, tracking=P)
    fresh = generate(model, spk, texts, lens, **kw)
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    decoders_for(model).clear()
    first = generate(model, spk, texts, lens, **kw)
    again = generate(model, spk, texts, lens, **kw)  # same buffers: position and counters start over
    assert torch.equal(first.tokens, fresh.tokens) and torch.equal(again.tokens, fresh.tokens)


def test_window_and_tracking_together_are_refused():
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(ValueError, match="choose one"):
        generate(model, spk, texts, lens, max_length=MAX_LEN, attention_window=(1, 2), tracking=P)
