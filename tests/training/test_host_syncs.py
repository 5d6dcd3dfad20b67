"""The Echolancer recipe on a GPU's terms: no host reads of device values on ordinary
steps, the fused optimizer's on-device skip of non-finite steps, the pinned attention backends, the
optimizer implementation, and what ``training.compile`` is given.

A "host read" is counted by wrapping ``Tensor.item/__float__/__int__/__bool__/__index__/tolist/numpy``.
Reads of the input batch (still on the host when the step starts) and of the optimizer's step
counters (host tensors on a GPU too, for foreach AdamW) are not syncs on a GPU and are not counted;
the model is single-speaker here because its speaker-range check reads ids on the CPU only.
"""

import logging

import pytest
import torch

import training.engine as engine
from tests.training.tiny_run import MODEL_CFG, TRAIN_CFG, dummy_data
from training.echolancer import DEVICE_METRICS, RunPaths, Trainer
from training.engine import resolve_optimizer_impl
from training.metrics import MetricWindow
from training.nonfinite import NonFinitePolicy
from utils.checkpoint import load_checkpoint
from utils.config import load_configs
from utils.distributed import DistInfo

BASE = ["training.batch_size=4", "training.log_step=4", "training.check_step=4", "training.val_step=1000",
        "training.save_step=1000", "training.test_step=1000", "training.epochs=10", "scheduler.warmup_steps=2",
        "scheduler.total_steps=8", "early_stopping.restore_best=false", "model.multi_speaker=false"]
READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy")


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dummy_data(tmp_path_factory.mktemp("data"), 16, overrides=("model.multi_speaker=false",))[0]


def make_trainer(data, out, overrides=()) -> Trainer:
    mcfg, tcfg = load_configs(MODEL_CFG, TRAIN_CFG, BASE + list(overrides))
    return Trainer(mcfg, tcfg, RunPaths(data, None, str(out), export=False), DistInfo())


def batches(t: Trainer, n: int = 3) -> list[dict]:
    ds = t.train_set
    return [t.collate([ds[(4 * i + j) % len(ds)] for j in range(4)]) for i in range(n)]


class HostReads:
    """Counts host reads of tensors other than the ``allowed`` ones while ``active``."""

    def __init__(self, monkeypatch, trainer: Trainer) -> None:
        self.n = 0
        self.active = False
        self.allowed: set[int] = set()
        self.trainer = trainer
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def allow(self, batch: dict) -> None:
        self.allowed |= {v.untyped_storage().data_ptr() for v in batch.values() if isinstance(v, torch.Tensor)}

    def _host_tensor(self, t: torch.Tensor) -> bool:
        ptr = t.untyped_storage().data_ptr()
        steps = {s["step"].untyped_storage().data_ptr() for s in self.trainer.optimizer.state.values()
                 if "step" in s and s["step"].device.type == "cpu" and self.trainer.optimizer_impl != "fused"}
        return ptr in self.allowed or ptr in steps

    def _wrap(self, original):
        counter = self

        def read(self, *a, **k):
            if counter.active and not counter._host_tensor(self):
                counter.n += 1
            return original(self, *a, **k)

        return read

    def count(self, fn, *a, **k):
        before, self.active = self.n, True
        try:
            result = fn(*a, **k)
        finally:
            self.active = False
        return result, self.n - before


def test_a_step_reads_nothing_from_the_device_and_the_log_line_reads_once(data, tmp_path, monkeypatch):
    # Before: int(mel_lens.sum()), float(totals[0]), float(grad_norm), the two finiteness flags and
    # every metric were read each step: 12 host reads per step (and the loop's stop flag, 1 more).
    t = make_trainer(data, tmp_path / "f", ["optimizer.impl=fused"])
    micro = batches(t)
    reads = HostReads(monkeypatch, t)
    window = MetricWindow(last_keys=("train/lr",))
    for b in micro:
        reads.allow(b)
        m, n = reads.count(t.train_step, [b])
        assert n == 0
        window.add(m)
    avg, n = reads.count(window.mean)
    assert n == 1 and t.step == 3 and set(avg) == set(DEVICE_METRICS) | {"train/lr", "train/align_prior_weight"}


def test_with_foreach_adamw_a_step_reads_only_its_finiteness_flags(data, tmp_path, monkeypatch):
    # foreach AdamW (the CPU default) cannot skip on the device: the step reads its two flags, once.
    t = make_trainer(data, tmp_path / "e")
    assert t.optimizer_impl == "foreach" and not t.deferred_nonfinite
    reads = HostReads(monkeypatch, t)
    for b in batches(t, 2):
        reads.allow(b)
        assert reads.count(t.train_step, [b])[1] == 1


def test_the_logged_window_means_are_bit_for_bit_the_old_per_step_averages(data, tmp_path):
    # The window sums on the device in float64; the log line must be what averaging the steps'
    # Python floats gave (the previous code), to the last bit.
    t = make_trainer(data, tmp_path / "w", ["optimizer.impl=fused"])
    window = MetricWindow(last_keys=("train/lr",))
    steps = []
    for b in batches(t, 3):
        m = t.train_step([b])
        window.add(m)
        steps.append(dict(m))  # reads this step's values (a test may)
    avg = window.mean()
    for k in steps[0]:
        old = steps[-1][k] if k == "train/lr" else sum(s[k] for s in steps) / len(steps)
        assert avg[k] == old, k
    assert steps[0]["train/grad_norm"] > 0 and steps[0]["train/skipped"] == 0.0


def test_the_loop_reads_the_device_only_on_log_and_check_steps(data, tmp_path, monkeypatch):
    t = make_trainer(data, tmp_path / "loop", ["optimizer.impl=fused", "training.max_steps=8"])
    reads = HostReads(monkeypatch, t)
    per_step: dict[int, int] = {}
    step_fn, periodic_fn = t.train_step, t._periodic

    def step(micro):
        # Only this step's batch is exempt: a freed batch's address can come back for another
        # tensor (the stacked finiteness flags), which a stale exemption would not count.
        reads.allowed = set()
        for b in micro:
            reads.allow(b)
        m, n = reads.count(step_fn, micro)
        reads.allowed = set()
        per_step[t.step] = n
        return m

    def periodic(*a, **k):
        status, n = reads.count(periodic_fn, *a, **k)
        per_step[t.step] += n
        return status

    monkeypatch.setattr(t, "train_step", step)
    monkeypatch.setattr(t, "_periodic", periodic)
    assert t.train().step == 8
    assert {s: n for s, n in per_step.items() if s % 4} == dict.fromkeys((1, 2, 3, 5, 6, 7), 0)
    assert per_step[4] == 2  # the window's values and the steps' finiteness flags


@pytest.mark.parametrize("check_step, stop_step", [(4, 4), (1, 3)])
def test_fused_non_finite_steps_apply_no_update_and_stop_at_the_next_check(data, tmp_path, monkeypatch,
                                                                          check_step, stop_step):
    # The fused optimizer skips on the device; the policy (3 in a row) acts when the flags are read:
    # at once with check_step 1, at the next check otherwise, the weights untouched either way.
    t = make_trainer(data, tmp_path / f"nan{check_step}", ["optimizer.impl=fused", "training.max_steps=10",
                                                           "training.max_nonfinite_steps=3",
                                                           f"training.check_step={check_step}"])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    crit = t.criterion.forward

    def nan_loss(out, normalizer=None):
        lo = crit(out, normalizer)
        lo.total = lo.total * float("nan")
        return lo

    monkeypatch.setattr(t.criterion, "forward", nan_loss)
    result = t.train()
    assert (result.status, result.step) == ("nonfinite", stop_step)
    ck = load_checkpoint(result.last_checkpoint)
    assert ck["nonfinite_total"] == stop_step
    for k, v in before.items():
        assert torch.equal(ck["model"][k], v), k
    assert all(int(s["step"]) == 0 for s in ck["optimizer"]["state"].values())  # no Adam step taken


def test_a_finite_step_after_the_limit_does_not_hide_it_from_a_late_read():
    p = NonFinitePolicy(2)
    for finite in (False, False, True):  # read together, after the fact
        p.record(finite)
    assert p.should_stop and "2 steps in a row" in p.message(3)


def test_a_stop_request_in_one_process_is_acted_on_at_the_next_step(data, tmp_path, monkeypatch):
    # check_step spaces out the all-reduced flag of multi-process runs only.
    t = make_trainer(data, tmp_path / "stop", ["training.max_steps=8", "training.check_step=10"])
    step_fn = t.train_step

    def step(micro):
        m = step_fn(micro)
        if t.step == 2:
            t.request_stop()
        return m

    monkeypatch.setattr(t, "train_step", step)
    result = t.train()
    assert (result.status, result.step) == ("interrupted", 2)
    assert load_checkpoint(tmp_path / "stop" / "ckpt")["step"] == 2


def test_the_optimizer_implementation_is_fused_on_cuda_foreach_elsewhere_and_logged(data, tmp_path, caplog):
    assert resolve_optimizer_impl("auto", torch.device("cuda")) == "fused"
    assert resolve_optimizer_impl("auto", torch.device("cpu")) == "foreach"
    assert resolve_optimizer_impl("fused", torch.device("cpu")) == "fused"
    caplog.set_level("INFO", logger="echolancer.train")
    t = make_trainer(data, tmp_path / "o")
    assert t.optimizer.defaults["foreach"] is True and not t.optimizer.defaults["fused"]
    assert "optimizer: adamw, foreach implementation (optimizer.impl = auto)" in caplog.text
    f = make_trainer(data, tmp_path / "o2", ["optimizer.impl=fused"])
    assert f.optimizer.defaults["fused"] is True


def test_training_steps_run_inside_the_pinned_attention_backends_and_the_log_says_so(data, tmp_path,
                                                                                    monkeypatch, caplog):
    from torch.nn.attention import SDPBackend

    state = {"inside": False, "backends": None, "forwards_inside": 0, "forwards": 0}

    class Recording:
        def __init__(self, backends):
            state["backends"] = list(backends)

        def __enter__(self):
            state["inside"] = True

        def __exit__(self, *exc):
            state["inside"] = False

    monkeypatch.setattr(engine, "sdpa_kernel", Recording)
    caplog.set_level("INFO", logger="echolancer.train")
    t = make_trainer(data, tmp_path / "attn", ["training.max_steps=2"])
    forward = t._forward_loss

    def watched(*a, **k):
        state["forwards"] += 1
        state["forwards_inside"] += state["inside"]
        return forward(*a, **k)

    monkeypatch.setattr(t, "_forward_loss", watched)
    t.train()
    assert state["forwards"] == 2 and state["forwards_inside"] == 2
    assert state["backends"] == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    assert SDPBackend.CUDNN_ATTENTION not in state["backends"]
    assert "SDPA backends pinned for training on cpu: flash, efficient, math (cuDNN attention excluded)" in caplog.text


def test_compile_is_dynamic_the_collate_pads_to_the_configured_multiple_and_workers_persist(
    data, tmp_path, monkeypatch, caplog
):
    given = {}

    def fake_compile(model, **kwargs):
        given.update(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    caplog.set_level("INFO", logger="echolancer.train")
    t = make_trainer(data, tmp_path / "c", ["training.compile=true", "training.pad_multiple=8",
                                            "training.num_workers=2"])
    assert given == {"dynamic": True}
    assert t.collate.pad_multiple == 8
    assert "torch.compile (dynamic shapes, lengths padded to multiples of 8)" in caplog.text
    b = t.collate([t.train_set[i] for i in range(3)])
    assert b["texts"].shape[1] % 8 == 0 and b["mels"].shape[1] % 8 == 0
    loader = t.train_loader()
    assert loader.persistent_workers and loader.num_workers == 2 and t.train_loader() is loader  # built once
    plain = make_trainer(data, tmp_path / "c0", ["training.num_workers=0"])
    assert not plain.train_loader().persistent_workers and plain.collate.pad_multiple == 16


def test_dynamic_compile_does_not_recompile_for_a_new_batch_length(data, tmp_path, monkeypatch):
    # The recipe's torch.compile arguments with dynamo's eager backend (no C++ toolchain needed):
    # a second, longer padded length reuses the graph.
    from torch._dynamo.utils import counters

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    t = make_trainer(data, tmp_path / "dyn", ["training.compile=true", "training.pad_multiple=4",
                                              "model.encoder.dropout=0.0", "model.decoder.dropout=0.0"])
    items = sorted((t.train_set[i] for i in range(len(t.train_set))), key=lambda it: len(it["mel"]) if "mel" in it
                   else 0)
    short = t.collate(items[:4])
    long = t.collate(items[-4:])
    assert short["mels"].shape[1] != long["mels"].shape[1] or short["texts"].shape[1] != long["texts"].shape[1]
    t.train_step([short])
    graphs = counters["stats"]["unique_graphs"]
    t.train_step([long])
    t.train_step([short])
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


def test_start_up_log_names_the_choices(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="echolancer.train")
    make_trainer(data, tmp_path / "log")
    assert "not compiled" in caplog.text
