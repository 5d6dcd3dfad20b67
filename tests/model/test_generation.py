"""Generation: cached == uncached, batch == alone, per-row stopping, special tokens, sampling knobs.

The models here are the tiny test config with weights re-drawn at unit scale: the default init
(std 0.02) gives nearly flat logits whose argmax is decided by rounding noise, which would make
"same tokens" comparisons meaningless (or flaky). At unit scale greedy decoding produces varied
tokens with clear margins; tests assert that variety so they cannot pass on a constant output.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model.decode_cache import decoders_for
from model.echolancer import Echolancer
from model.generation import generate
from model.layers import CodeFactors
from model.sampling import apply_repetition_penalty, filter_top_k_top_p
from utils.config import load_config

MAX_LEN = 40



def make_model(*overrides: str, gain: float = 1.0, seed: int = 0) -> Echolancer:
    cfg = load_config("config/model_tiny.yaml", list(overrides))
    model = Echolancer.from_config(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.normal_(0, gain / math.sqrt(mod.in_features), generator=g)
                mod.bias.normal_(0, 0.1, generator=g)
            elif isinstance(mod, nn.Embedding):
                mod.weight.normal_(0, 1.0, generator=g)
            elif isinstance(mod, CodeFactors):
                mod.inputs.normal_(0, 1.0, generator=g)
                mod.outputs.normal_(0, gain / math.sqrt(mod.outputs.shape[1]), generator=g)
        if model.stop_head is not None:
            model.stop_head.bias.fill_(-5.0)  # a random stop head would stop at once half the time
    return model.eval()


def make_batch(lengths=(12, 7, 3), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), max(lengths)
    texts = torch.randint(3, 30, (B, S), generator=g)
    src_lens = torch.tensor(lengths)
    speakers = torch.arange(B) % 4
    return speakers, texts, src_lens


def assert_varied(tokens: torch.Tensor) -> None:
    assert len(set(tokens.flatten().tolist())) > 10, "test model output is too uniform to compare"


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # ALiBi, GQA (2 query heads share 1 KV head)
        ["model.use_alibi=false", "model.decoder_kv_heads=2"],  # sinusoidal positions, plain MHA
        ["model.stop_head=true"],
        ["model.code_levels=[]"],  # a free vector per codec token (the others share by FSQ digit)
    ],
    ids=["alibi-gqa", "sinusoidal-mha", "stop-head", "free-codes"],
)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])  # the uncached reference runs the full decoder
def test_greedy_cached_equals_uncached(overrides, backend):
    model = make_model(*overrides, f"model.attention_backend={backend}")
    spk, texts, lens = make_batch()
    cached = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, use_cache=True)
    full = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, use_cache=False)
    assert_varied(cached.tokens)
    assert torch.equal(cached.tokens, full.tokens)
    assert torch.equal(cached.lengths, full.lengths)
    torch.testing.assert_close(cached.gate, full.gate, atol=1e-5, rtol=1e-4)


def test_batch_gives_each_row_the_tokens_it_gets_alone():
    model = make_model()
    spk, texts, lens = make_batch((15, 9, 4, 1))
    batch = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert_varied(batch.tokens)
    for b in range(texts.shape[0]):
        L = int(lens[b])
        alone = generate(model, spk[b : b + 1], texts[b : b + 1, :L], lens[b : b + 1], max_length=MAX_LEN, temperature=0.0)
        assert torch.equal(alone.tokens[0], batch.tokens[b, : alone.tokens.shape[1]]), f"row {b}"
        torch.testing.assert_close(alone.gate[0], batch.gate[b, : alone.gate.shape[1]], atol=1e-5, rtol=1e-4)


class ForceAtStep:
    """Forward hook: from call ``step`` on, add ``value`` to output column ``col`` of each row.

    Both decoding paths run the head once per generated step on (B, V) (the uncached path projects
    only the newest position), so the call count is the step.
    """

    def __init__(self, schedule: dict[int, int], col: int | None, value: float = 1.0e4) -> None:
        self.schedule, self.col, self.value, self.calls = schedule, col, value, 0

    def __call__(self, module, args, out):
        out = out.clone()
        for row, step in self.schedule.items():
            if self.calls >= step:
                if self.col is None:
                    out[row] += self.value
                else:
                    out[row, self.col] += self.value
        self.calls += 1
        return out


@pytest.mark.parametrize("use_cache", [True, False])
def test_each_row_stops_at_its_own_eos_and_stays_stopped(use_cache):
    model = make_model()
    spk, texts, lens = make_batch()
    alone_row1 = generate(model, spk[1:2], texts[1:2, :7], lens[1:2], max_length=MAX_LEN, temperature=0.0)
    hook = model.head.register_forward_hook(ForceAtStep({0: 3, 2: 5}, col=model.eos_id))
    try:
        res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, use_cache=use_cache)
    finally:
        hook.remove()
    assert res.lengths.tolist() == [3, MAX_LEN, 5]
    assert res.hit_max_length.tolist() == [False, True, False]
    assert (res.tokens[0, 3:] == model.pad_id).all() and (res.tokens[0, :3] < model.codebook_size).all()
    assert (res.tokens[2, 5:] == model.pad_id).all() and (res.tokens[2, :5] < model.codebook_size).all()
    # The stop step records P(EOS) ~ 1, later steps of a stopped row record 0.
    assert res.gate[0, 3] > 0.99 and res.gate[2, 5] > 0.99
    assert (res.gate[0, 4:] == 0).all() and (res.gate[2, 6:] == 0).all()
    # The unfinished row is unaffected by its neighbours stopping (they are fed PAD).
    assert torch.equal(res.tokens[1], alone_row1.tokens[0])


def test_all_rows_stopping_ends_the_loop_and_trims_the_output():
    model = make_model()
    spk, texts, lens = make_batch()
    hook = model.head.register_forward_hook(ForceAtStep({0: 2, 1: 6, 2: 4}, col=model.eos_id))
    try:
        res = generate(model, spk, texts, lens, max_length=1000, temperature=0.0, sync_every=4)
    finally:
        hook.remove()
    assert res.lengths.tolist() == [2, 6, 4]
    assert not res.hit_max_length.any()
    assert res.tokens.shape == (3, 7)  # through row 1's stopping step
    assert res.steps == 8  # the first "all done" check after step 6 is at step 8, not 1000


def test_stop_head_stops_rows_whose_gate_passes_the_threshold():
    model = make_model("model.stop_head=true")
    spk, texts, lens = make_batch()
    hook = model.stop_head.register_forward_hook(ForceAtStep({1: 4}, col=None, value=50.0))
    try:
        res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, gate_threshold=0.5)
    finally:
        hook.remove()
    assert res.lengths[1] == 4 and res.gate[1, 4] > 0.99
    assert res.hit_max_length.tolist() == [True, False, True]
    assert (res.gate[[0, 2]] < 0.5).all()  # the gate is sigmoid(stop logit), not P(EOS)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_pad_and_bos_are_never_emitted_even_when_most_likely(temperature):
    model = make_model()
    with torch.no_grad():
        model.head.bias[model.pad_id] = 1.0e4
        model.head.bias[model.bos_id] = 1.0e4
    spk, texts, lens = make_batch()
    res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=temperature,
                   generator=torch.Generator().manual_seed(0))
    assert (res.tokens < model.codebook_size).all()
    assert res.hit_max_length.all() and (res.lengths == MAX_LEN).all()


def test_max_length_bounds_generation_and_is_reported():
    model = make_model()
    spk, texts, lens = make_batch()
    res = generate(model, spk, texts, lens, max_length=7, temperature=0.0)
    assert res.tokens.shape == (3, 7) and res.gate.shape == (3, 7)
    assert res.lengths.tolist() == [7, 7, 7] and res.hit_max_length.all()
    assert res.steps == 7


def test_min_length_suppresses_eos_until_reached():
    model = make_model()
    with torch.no_grad():
        model.head.bias[model.eos_id] = 1.0e4  # the model wants to stop at once
    spk, texts, lens = make_batch()
    immediate = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert immediate.lengths.tolist() == [0, 0, 0] and (immediate.tokens == model.pad_id).all()
    delayed = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, min_length=10)
    assert delayed.lengths.tolist() == [10, 10, 10]
    assert (delayed.tokens[:, :10] < model.codebook_size).all()


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = make_model()
    spk, texts, lens = make_batch()

    def run(seed: int):
        return generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=1.0, top_k=50,
                        generator=torch.Generator().manual_seed(seed)).tokens

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_1_and_tiny_top_p_sample_the_greedy_token():
    model = make_model()
    spk, texts, lens = make_batch()
    greedy = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0).tokens
    g = torch.Generator().manual_seed(0)
    k1 = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=1.5, top_k=1, generator=g).tokens
    p0 = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=1.5, top_p=1.0e-6, generator=g).tokens
    assert torch.equal(k1, greedy) and torch.equal(p0, greedy)


def test_filter_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_top_k_top_p(logits, top_p=0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.5 + 0.3
    kept = filter_top_k_top_p(logits, top_k=3, top_p=0.9).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_repetition_penalty_scales_seen_logits_towards_unlikely():
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]


def test_repetition_penalty_reduces_repeats_in_generation():
    model = make_model(gain=4.0)  # at this scale the greedy model repeats one token forever
    spk, texts, lens = make_batch()
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0).tokens
    penalised = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, repetition_penalty=100.0).tokens
    distinct = lambda toks: sum(len(set(r.tolist())) for r in toks)
    assert distinct(penalised) > 3 * distinct(plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cache_matches_full_decoder_under_cpu_autocast(dtype):
    """Under autocast the KV cache is kept in the autocast dtype and one cached step gives the
    full decoder's logits for the same prefix (to that dtype's precision). Greedy tokens are not
    compared: at bf16 precision near-tied logits may legitimately flip."""
    model = make_model("model.stop_head=true")
    spk, texts, lens = make_batch()
    with torch.autocast("cpu", dtype=dtype):
        res = generate(model, spk, texts, lens, max_length=24, temperature=0.0)
        enc = model.encode(spk, texts, lens)
        state = model.init_decode_state(enc, 24, dtype)
        prefix = torch.cat([torch.full((3, 1), model.bos_id), res.tokens[:, :-1]], dim=1)
        full_logits, full_stop = model.project(model.decode(prefix, enc))
        for t in range(prefix.shape[1]):
            logits, stop = model.decode_step(prefix[:, t : t + 1], torch.tensor([t]), state)
            torch.testing.assert_close(logits.float(), full_logits[:, t].float(), atol=0.1, rtol=0.05)
            torch.testing.assert_close(stop.float(), full_stop[:, t].float(), atol=0.1, rtol=0.05)
    assert all(c.k.dtype == dtype for c in state.caches)
    assert (res.tokens < model.codebook_size).all()


def test_generation_runs_in_eval_mode_and_restores_the_training_flag():
    model = make_model("model.decoder.dropout=0.5", "model.encoder.dropout=0.5").train()
    spk, texts, lens = make_batch()
    a = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0).tokens
    b = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0).tokens
    assert torch.equal(a, b)  # dropout would make two greedy runs differ
    assert model.training


def test_infer_method_delegates_to_generate():
    model = make_model()
    spk, texts, lens = make_batch()
    direct = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    via = model.infer(spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert torch.equal(direct.tokens, via.tokens)


def test_results_are_ordinary_tensors_callers_can_modify():
    model = make_model()
    spk, texts, lens = make_batch()
    res = generate(model, spk, texts, lens, max_length=8, temperature=0.0)
    res.tokens[:, 0] = 0  # an inference-mode tensor would refuse in-place updates here
    res.gate.mul_(2.0)
    assert not res.tokens.is_inference() and (res.tokens[:, 0] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1.0}, "temperature=-1.0 is not allowed; temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
        ({"max_length": 0}, "max_length must be an integer >= 1"),
        ({"gate_threshold": 1.5}, "gate_threshold must be in (0, 1)"),
    ],
)
def test_bad_arguments_are_named_in_the_error(kwargs, message):
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(ValueError) as e:
        generate(model, spk, texts, lens, **kwargs)
    assert message in str(e.value)


def test_vq_token_mode_conditions_on_the_reference_utterance():
    model = make_model("model.vq_token_mode=true", "model.multi_speaker=false")
    _, texts, lens = make_batch()
    g = torch.Generator().manual_seed(3)
    ref = torch.randint(0, 1000, (3, 20), generator=g)
    ref_lens = torch.tensor([20, 11, 5])
    res = generate(model, None, texts, lens, max_length=MAX_LEN, temperature=0.0, vq_tokens=ref, vq_token_lens=ref_lens)
    alone = generate(model, None, texts[1:2, :7], lens[1:2], max_length=MAX_LEN, temperature=0.0,
                     vq_tokens=ref[1:2, :11], vq_token_lens=ref_lens[1:2])
    assert torch.equal(res.tokens[1], alone.tokens[0])  # reference padding does not leak in
    other = generate(model, None, texts, lens, max_length=MAX_LEN, temperature=0.0,
                     vq_tokens=ref.flip(0), vq_token_lens=ref_lens.flip(0))
    assert not torch.equal(res.tokens, other.tokens)  # the reference changes the output
    with pytest.raises(ValueError, match="vq_token_mode: pass the reference utterance"):
        generate(model, None, texts, lens, max_length=4)


def test_length_bounds_relative_to_the_text_hold_per_row():
    model = make_model()
    spk, texts, lens = make_batch(lengths=(12, 7, 3))
    with torch.no_grad():
        model.head.bias[model.eos_id] = 1.0e4  # wants to stop at once: the minimum must hold it back
    res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, min_tokens_per_text_token=1.5)
    assert res.lengths.tolist() == [18, 10, 4]  # floor(1.5 * S) per row
    assert not res.hit_max_length.any()
    with torch.no_grad():
        model.head.bias[model.eos_id] = -1.0e4  # never stops: the maximum must cut each row
    res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, max_tokens_per_text_token=2.5)
    assert res.lengths.tolist() == [30, 18, 8]  # ceil(2.5 * S) per row
    assert res.hit_max_length.all()
    for b, n in enumerate(res.lengths.tolist()):
        assert (res.tokens[b, :n] < model.codebook_size).all() and (res.tokens[b, n:] == model.pad_id).all()
    capped = generate(model, spk, texts, lens, max_length=20, temperature=0.0, max_tokens_per_text_token=2.5)
    assert capped.lengths.tolist() == [20, 18, 8]  # the global max_length still bounds every row


def test_length_bounds_give_the_same_tokens_cached_and_uncached():
    model = make_model()
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.0, min_tokens_per_text_token=0.5, max_tokens_per_text_token=2.0)
    a = generate(model, spk, texts, lens, use_cache=True, **kw)
    b = generate(model, spk, texts, lens, use_cache=False, **kw)
    assert_varied(a.tokens)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)


@pytest.mark.parametrize("kwargs", [dict(min_tokens_per_text_token=-1.0), dict(max_tokens_per_text_token=0.0),
                                    dict(min_tokens_per_text_token=3.0, max_tokens_per_text_token=2.0)])
def test_bad_length_bounds_are_named(kwargs):
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(ValueError, match=next(iter(kwargs)) if len(kwargs) == 1 else "max_tokens_per_text_token"):
        generate(model, spk, texts, lens, max_length=MAX_LEN, **kwargs)


def test_sampling_draws_each_token_with_its_probability():
    from model.sampling import choose_tokens

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.clamp(min=1e-30).log().expand(40_000, -1)
    g = torch.Generator().manual_seed(0)
    picks = choose_tokens(logits, 1.0, 0, 1.0, g)
    freq = torch.bincount(picks, minlength=5).float() / picks.numel()
    assert torch.allclose(freq, probs, atol=0.01), freq  # 4 sigma at n = 40k is about 0.01
    assert freq[4] == 0


def test_length_bounds_come_from_the_data_unless_the_config_sets_them():
    from model.generation_defaults import length_bounds, length_ratio_stats

    stats = length_ratio_stats([10, 20, 4], [50, 60, 40])  # ratios 5, 3, 10
    assert stats["min_tokens_per_text_token"] == 3.0 and stats["max_tokens_per_text_token"] == 10.0
    assert length_bounds(None, None, 1.5, stats) == (2.0, 15.0)
    assert length_bounds(1.0, None, 1.5, stats) == (1.0, 15.0)  # the config wins
    assert length_bounds(None, None, 1.5, None) == (None, None)  # no stats: no bound
    with pytest.raises(ValueError, match="no utterance"):
        length_ratio_stats([0], [5])


# ---- decode state reused across calls (what lets CUDA graphs be captured once) -------------------


def _texts(lengths, S, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 30, (len(lengths), S), generator=g), torch.tensor(lengths)


def test_reused_decode_state_gives_the_tokens_of_a_fresh_state(monkeypatch):
    import model.generation as generation

    model = make_model()
    spk = torch.arange(3) % 4
    calls = [(_texts((12, 7, 3), 12, seed=1), None),  # text bucket 64
             (_texts((20, 15, 9), 20, seed=2), torch.randn(3, 384, generator=torch.Generator().manual_seed(5))),
             (_texts((70, 30, 2), 70, seed=3), None)]  # bucket 128: a second decoder
    fresh = [generate(model, spk, t, lens, em_hidden=em, max_length=MAX_LEN, temperature=0.0)
             for (t, lens), em in calls]
    assert not torch.equal(fresh[0].tokens, fresh[1].tokens)  # the calls really differ
    # The CPU runs eager decode_step on the reusable state (the CUDA path replays a graph on it).
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    decoders_for(model).clear()
    states, pointers = [], []
    for ((t, lens), em), ref in zip(calls, fresh):
        res = generate(model, spk, t, lens, em_hidden=em, max_length=MAX_LEN, temperature=0.0)
        assert torch.equal(res.tokens, ref.tokens) and torch.equal(res.lengths, ref.lengths)
        torch.testing.assert_close(res.gate, ref.gate, atol=1e-5, rtol=1e-4)
        decoders = decoders_for(model).entries
        static = next(reversed(decoders.values()))[0]
        states.append(static)
        pointers.append([kb.data_ptr() for kb, _ in static.state.cross_kv] + [static.state.cond.data_ptr()])
    assert states[0] is states[1] and pointers[0] == pointers[1]  # same bucket: same buffers
    assert states[2] is not states[0] and states[2].text_len == 128
    assert len(decoders_for(model).entries) == 2


def test_reused_decode_state_is_dropped_when_the_weights_move(monkeypatch):
    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    first = next(iter(decoders_for(model).entries.values()))[0]
    model.load_state_dict(model.state_dict())  # copies in place: same addresses, kept
    generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert next(iter(decoders_for(model).entries.values()))[0] is first
    model.double()  # new weight tensors (and a new dtype): a new state
    res = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    entries = list(decoders_for(model).entries.values())
    assert len(entries) == 1 and entries[0][0] is not first
    assert entries[0][0].state.caches[0].k.dtype == torch.float64
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: False)
    assert torch.equal(res.tokens, generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0).tokens)


def test_deferred_done_poll_changes_no_result(monkeypatch):
    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    runs = []
    for deferred in (False, True):
        monkeypatch.setattr(generation, "_defer_done_poll", lambda device, d=deferred: d)
        hook = model.head.register_forward_hook(ForceAtStep({0: 2, 1: 6, 2: 4}, col=model.eos_id))
        try:
            runs.append(generate(model, spk, texts, lens, max_length=1000, temperature=0.0, sync_every=4))
        finally:
            hook.remove()
    now, later = runs
    assert torch.equal(now.tokens, later.tokens) and torch.equal(now.lengths, later.lengths)
    assert torch.equal(now.gate, later.gate) and torch.equal(now.hit_max_length, later.hit_max_length)
    assert (now.steps, later.steps) == (8, 12)  # the answer of the check at step 8 is read at step 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_cuda_graph_is_captured_once_and_replayed_by_later_calls(monkeypatch):
    import model.decode_cache as decode_cache

    captures = []

    class CountingStep(decode_cache.CudaGraphStep):
        def __init__(self, *args, **kwargs):
            captures.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(decode_cache, "CudaGraphStep", CountingStep)
    model = make_model().cuda()
    spk = (torch.arange(3) % 4).cuda()
    for i, (lengths, S) in enumerate((((12, 7, 3), 12), ((20, 15, 9), 20), ((9, 9, 1), 9))):
        texts, lens = (t.cuda() for t in _texts(lengths, S, seed=i))
        eager = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
        graph = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, compile=True)
        assert torch.equal(graph.tokens, eager.tokens) and torch.equal(graph.lengths, eager.lengths)
        torch.testing.assert_close(graph.gate, eager.gate, atol=1e-4, rtol=1e-3)
    assert len(captures) == 1
    generate(model, spk, texts, lens, max_length=MAX_LEN + 8, temperature=0.0, compile=True)
    assert len(captures) == 2  # another max_length: another graph
    import copy

    assert len(decoders_for(copy.deepcopy(model))) == 0  # captured graphs are not copied


def test_reused_decode_state_does_not_keep_the_model_alive(monkeypatch):
    import gc
    import weakref

    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    generate(model, spk, texts, lens, max_length=8, temperature=0.0)
    ref = weakref.ref(model)
    static = weakref.ref(next(iter(decoders_for(model).entries.values()))[0])
    del model
    gc.collect()
    assert ref() is None and static() is None  # the model's captured states went with it


def test_captured_states_stay_out_of_the_state_dict_and_do_not_travel_with_copies(monkeypatch):
    import copy
    import io

    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    ref = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert len(decoders_for(model)) == 1
    assert set(model.state_dict()) == set(make_model().state_dict())  # nothing added to the weights
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        assert len(decoders_for(other)) == 0 and decoders_for(other) is not decoders_for(model)
        res = generate(other, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
        assert torch.equal(res.tokens, ref.tokens) and len(decoders_for(other)) == 1
    assert len(decoders_for(model)) == 1  # the copies captured their own


# ---- the monotonic attention window ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_attention_window_gives_the_same_tokens_cached_and_uncached(backend):
    model = make_model(f"model.attention_backend={backend}")
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.0, attention_window=(1, 2))
    a = generate(model, spk, texts, lens, use_cache=True, **kw)
    b = generate(model, spk, texts, lens, use_cache=False, **kw)
    assert_varied(a.tokens)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert not torch.equal(plain.tokens, a.tokens)  # the window changes what the decoder sees


def test_attention_window_hides_the_text_outside_it_and_only_moves_forward(monkeypatch):
    import model.tracking as tracking

    model = make_model()
    spk, texts, lens = make_batch()
    seen_masks, positions = [], []
    real = tracking.window_position

    def record(pos, weights):
        new = real(pos, weights)
        # The weights of the step: zero outside the window around the position it started from.
        for w in weights:
            outside = ~tracking.window_mask(pos, w.shape[-1], (1, 2))[:, None]
            seen_masks.append(bool((w.masked_fill(~outside, 0) == 0).all()))
        positions.append(new.clone())
        return new

    monkeypatch.setattr(tracking, "window_position", record)
    generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0, attention_window=(1, 2))
    assert seen_masks and all(seen_masks)
    pos = torch.stack(positions)  # (steps, B)
    assert (pos[1:] >= pos[:-1]).all()  # never goes back
    assert (pos[1:] - pos[:-1] <= 2).all()  # at most `forward` positions a step
    assert (pos[-1] > 0).any()  # and it does move
    assert (pos < lens).all()  # never onto padded text


@pytest.mark.parametrize("window", [(1,), (1, -1), (1.5, 2), "12", (True, 1)])
def test_bad_attention_window_is_named(window):
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(ValueError, match="attention_window"):
        generate(model, spk, texts, lens, max_length=MAX_LEN, attention_window=window)


def test_reused_decode_state_restarts_the_window_at_the_first_text_token(monkeypatch):
    import model.generation as generation

    model = make_model()
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.0, attention_window=(1, 2))
    fresh = generate(model, spk, texts, lens, **kw)
    monkeypatch.setattr(generation, "_uses_static_decoder", lambda device, compile: True)
    decoders_for(model).clear()
    first = generate(model, spk, texts, lens, **kw)
    again = generate(model, spk, texts, lens, **kw)  # same buffers; the position must start over
    assert torch.equal(first.tokens, fresh.tokens) and torch.equal(again.tokens, fresh.tokens)


# ---- the sampling parameters object -----------------------------------------------------------


def test_sampling_params_object_gives_what_the_keywords_give():
    from model.sampling import SamplingParams

    model = make_model()
    spk, texts, lens = make_batch()
    kw = dict(max_length=MAX_LEN, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3,
              min_tokens_per_text_token=0.5, attention_window=[1, 2])
    params = SamplingParams(**kw)
    assert params.attention_window == (1, 2)  # a config's list becomes a hashable tuple
    hash(params)
    by_kw = generate(model, spk, texts, lens, generator=torch.Generator().manual_seed(3), **kw)
    by_obj = generate(model, spk, texts, lens, generator=torch.Generator().manual_seed(3), params=params)
    assert torch.equal(by_kw.tokens, by_obj.tokens) and torch.equal(by_kw.lengths, by_obj.lengths)
    # Keywords replace the object's fields (and are checked again).
    greedy = generate(model, spk, texts, lens, params=params, temperature=0.0, repetition_penalty=1.0,
                      min_tokens_per_text_token=None, attention_window=None)
    plain = generate(model, spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert torch.equal(greedy.tokens, plain.tokens)
    with pytest.raises(ValueError, match="temperature=-1"):
        generate(model, spk, texts, lens, params=params, temperature=-1.0)


def test_sampling_params_are_checked_when_built_and_frozen():
    import dataclasses

    from model.sampling import SamplingParams
    from model.tracking import TrackingParams

    with pytest.raises(ValueError, match="top_p=0.0 is not allowed; top_p must be in"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="min_length=5 is not allowed"):
        SamplingParams(max_length=4, min_length=5)
    with pytest.raises(ValueError, match="choose one"):
        SamplingParams(attention_window=(1, 2), tracking=TrackingParams())
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().temperature = 0.0
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(ValueError, match=f"top_k must be in \\[0, {model.n_vocab}\\]"):
        generate(model, spk, texts, lens, top_k=model.n_vocab + 1)  # the one check that needs the model


def test_unknown_keyword_is_named_like_a_python_keyword_error():
    model = make_model()
    spk, texts, lens = make_batch()
    with pytest.raises(TypeError, match="generate\\(\\) got an unexpected keyword argument 'temprature'"):
        generate(model, spk, texts, lens, temprature=0.0)


def test_infer_applies_the_model_defaults_to_keywords_but_not_to_a_params_object():
    from model.sampling import SamplingParams

    model = make_model()
    spk, texts, lens = make_batch(lengths=(12, 7, 3))
    with torch.no_grad():
        model.head.bias[model.eos_id] = -1.0e4  # never stops: only a length bound ends a row
    model.length_bounds = (None, 2.5)
    bounded = model.infer(spk, texts, lens, max_length=MAX_LEN, temperature=0.0)
    assert bounded.lengths.tolist() == [30, 18, 8]  # the model's bound, ceil(2.5 * S)
    params = SamplingParams(max_length=MAX_LEN, temperature=0.0)
    assert model.infer(spk, texts, lens, params=params).lengths.tolist() == [MAX_LEN] * 3
