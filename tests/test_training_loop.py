"""The optimisation loop's parts, each with the test that would have caught its old defect:
the z density's learning rate, the log-σ floor, the step-based schedule and the weight average,
plus the data mix, warm starts and the training plan."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_codec import CodecConfig, create_model
from icm_codec.latent import L_MIN, LOG_SCALE_FRAC, floor_log_scale
from icm_codec.losses import bpp_of, loss_weights, rate_distortion_loss
from icm_codec.training import LRSchedule, WeightEMA, make_optimizers, set_lr, z_rate_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(kind: str = "single", **kw) -> torch.nn.Module:
    cfg = CodecConfig(kind=kind, N=32, hyper_channels=8, feature_channels=32,
                      context_channels=16, **kw)
    return create_model(cfg)


def _z_bits_after(model, steps: int, lr: float = 3e-4, **opt_kw) -> tuple[float, float]:
    """Fit only the entropy bottleneck of ``model`` to fixed-scale Gaussian z with the
    project's optimizers; returns (bits per symbol, entropy of the rounded samples)."""
    eb = model.coder.entropy_bottleneck
    opt, aux_opt = make_optimizers(model, lr, **opt_kw)
    scales = torch.tensor([0.5, 1, 2, 3, 0.3, 1.5, 4, 0.8]).view(1, 8, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        z = torch.randn(16, 8, 4, 4, generator=gen) * scales
        _, lik = eb(z)
        bits = -torch.log2(lik).sum() / z.numel()
        opt.zero_grad(set_to_none=True)
        bits.backward()
        opt.step()
        aux = eb.loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
    eb.eval()
    z = torch.randn(64, 8, 8, 8, generator=gen) * scales
    with torch.no_grad():
        _, lik = eb(z)
    bits = float(-torch.log2(lik).sum() / z.numel())
    entropy = 0.0
    for c in range(8):
        _, counts = torch.unique(torch.round(z[:, c]), return_counts=True)
        p = counts / counts.sum()
        entropy += float(-(p * torch.log2(p)).sum()) / 8
    return bits, entropy


def test_optimizer_groups_scale_the_scheduled_rate() -> None:
    opt, _ = make_optimizers(_small(), 3e-4, density_lr_scale=4.0)
    density = [g for g in opt.param_groups if g["lr_scale"] > 1]
    assert len(density) == 1 and density[0]["lr"] == pytest.approx(3e-4 * 4)
    set_lr(opt, 1e-4)
    assert density[0]["lr"] == pytest.approx(4e-4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


# -- defect 1: z's density is fitted before export ------------------------------------------
def test_z_density_is_fitted_before_export() -> None:
    """Trained at the main rate the density stays wide, and z cost far more than its entropy
    (the preview packages paid ~3.8 bits per symbol for ~2.0 bits of entropy); the fit at
    export brings it to within a few per cent, touching nothing but the density."""
    from icm_codec.training import refit_density

    torch.manual_seed(0)
    model = _small()
    slow, entropy = _z_bits_after(model, 300)
    assert slow > 1.3 * entropy  # what the defect looked like
    scales = torch.tensor([0.5, 1, 2, 3, 0.3, 1.5, 4, 0.8]).view(1, 8, 1, 1)
    gen = torch.Generator().manual_seed(3)
    zs = [torch.randn(16, 8, 4, 4, generator=gen) * scales for _ in range(32)]
    others = {k: v.clone() for k, v in model.state_dict().items() if "entropy_bottleneck" not in k}
    before, after = refit_density(model, zs, steps=300)
    assert before > 1.3 * entropy and after < 1.05 * entropy
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())


# -- defect 2: log σ below its floor still receives the gradients that raise it -------------
def test_log_scale_floor_passes_upward_gradients() -> None:
    floor = L_MIN / 2**LOG_SCALE_FRAC
    x = torch.tensor([floor - 1.0, floor - 1.0, floor + 1.0], requires_grad=True)
    y = floor_log_scale(x)
    assert y.tolist() == pytest.approx([floor, floor, floor + 1.0])
    y.backward(torch.tensor([-1.0, 1.0, 1.0]))  # loss falls if x[0] rises, if x[1] falls
    assert x.grad.tolist() == [-1.0, 0.0, 1.0]


def test_collapsed_scales_come_back_when_the_rate_needs_them() -> None:
    """Every σ starts under the floor; y has real spread, so the rate wants larger σ."""
    torch.manual_seed(0)
    coder = _small().coder
    for ctx in coder.context:
        torch.nn.init.zeros_(ctx.log_scale.weight)
        torch.nn.init.constant_(ctx.log_scale.bias, -6.0)  # σ = e^-6, far below 0.105
    opt = torch.optim.Adam([p for ctx in coder.context for p in ctx.log_scale.parameters()],
                           lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        y = torch.randn(2, coder.latent_channels, 8, 8, generator=gen) * 4
        rate = -torch.log2(coder(y)["likelihoods"]["y"]).mean()
        opt.zero_grad(set_to_none=True)
        rate.backward()
        opt.step()
    bias = torch.cat([ctx.log_scale.bias.detach() for ctx in coder.context])
    # every σ rose (with torch.clamp none would move from -6), most well above the floor
    assert float(bias.min()) > -6.0 + 2.0
    assert float(bias.median()) > L_MIN / 2**LOG_SCALE_FRAC + 1.0



def test_noisy_z_shows_a_small_z_to_the_hyper_decoder() -> None:
    """With rounding, a z inside ±½ of its median reaches h_s as the median (its signal is
    invisible while its rate pulls it in: the collapse docs/training.md describes); with
    ``z_noise`` h_s sees z + U(-½, ½) in training, and coding (eval) still rounds."""
    torch.manual_seed(0)
    coder = _small().coder.train()
    with torch.no_grad():
        coder.h_a[-1].weight.mul_(1e-3)  # every z well inside the dead zone
        coder.h_a[-1].bias.zero_()
    seen: list[torch.Tensor] = []
    coder.h_s.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    y = torch.randn(1, coder.latent_channels, 16, 16)
    for noise, training in ((False, True), (True, True), (True, False)):
        coder.z_noise = noise
        coder.train(training)
        coder(y)
    rounded, noisy, coded = seen
    medians = coder.entropy_bottleneck._get_medians().detach()
    assert torch.equal(rounded, medians.expand_as(rounded))
    assert torch.equal(coded, rounded)
    z = coder.h_a(y).detach()
    assert float((noisy - z).abs().max()) <= 0.5
    assert float((noisy - medians).abs().mean()) > 0.1

def test_z_rate_ramp_frees_z_early_and_charges_it_in_full_later() -> None:
    """``--z-rate-ramp``: z's rate weighs 0 → 1 in the loss over the ramp; the reported bpp
    is always the whole estimate, and at weight 0 nothing in the loss pulls on z's density."""
    assert [z_rate_weight(s, 600) for s in (0, 300, 600, 5000)] == [0.0, 0.5, 1.0, 1.0]
    assert z_rate_weight(0, 0) == 1.0
    torch.manual_seed(0)
    model = _small().train()
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    full = rate_distortion_loss(out, x, 0.05)
    free = rate_distortion_loss(out, x, 0.05, z_weight=0.0)
    bpp_z = bpp_of({"z": out["likelihoods"]["z"]}, 64 * 64)
    assert torch.allclose(full["bpp_z"], bpp_z)
    assert torch.allclose(free["bpp"], full["bpp"])
    assert float(bpp_z.detach()) > 0.005
    assert abs(float((full["loss"] - free["loss"] - bpp_z).detach())) < 1e-3
    free["loss"].backward()
    density = [p for n, p in model.coder.entropy_bottleneck.named_parameters()
               if n != "quantiles"]
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in density)


# -- defect 3: a step-based schedule that a resume cannot move -------------------------------
def test_schedule_is_step_based() -> None:
    s = LRSchedule(peak=4e-4, warmup=100, end=1000, decay=200, final_ratio=0.05)
    assert s(0) == pytest.approx(4e-6)
    assert s(99) == pytest.approx(4e-4)
    assert s(500) == pytest.approx(4e-4) and s(800) == pytest.approx(4e-4)
    assert s(900) == pytest.approx(4e-4 * (0.05 + 0.95 * 0.5))
    assert s(1000) == pytest.approx(4e-4 * 0.05) == s(5000)  # after the end: the final rate
    rates = [s(i) for i in range(800, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert LRSchedule.from_dict(s.to_dict()) == s


def test_extending_a_run_never_changes_a_rate_already_used() -> None:
    s = LRSchedule(peak=3e-4, warmup=10, end=1000, decay=200)
    longer = s.extended(3000, step=400)  # before the decay: the plateau grows
    assert [longer(i) for i in range(400)] == [s(i) for i in range(400)]
    assert longer.decay_start == 2800
    late = s.extended(3000, step=900)  # the decay has begun: it finishes, then final rate
    assert [late(i) for i in range(900)] == [s(i) for i in range(900)]
    assert late(2999) == pytest.approx(s(1000))


def test_weight_average_is_applied_and_restored() -> None:
    lin = torch.nn.Linear(2, 1)
    ema = WeightEMA(lin, decay=0.5)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    for _ in range(50):
        ema.update(lin)
    with ema.applied(lin):
        np.testing.assert_allclose(lin.weight.detach(), start + 1.0, atol=1e-6)
    ema2 = WeightEMA(lin, decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    with torch.no_grad():
        lin.weight.copy_(start)
    with ema2.applied(lin):
        np.testing.assert_allclose(lin.weight.detach(), start + 1.0, atol=1e-6)
    np.testing.assert_allclose(lin.weight.detach(), start)  # its own weights come back


# -- defect 4: the data mix ------------------------------------------------------------------
def test_video_frames_are_capped_and_never_validate_when_photos_exist() -> None:
    from icm_codec.train.data import Sample
    from icm_codec.train.trainer import _val_tensors, sampling_weights

    img = np.zeros((300, 300, 3), np.uint8)
    samples = [Sample(f"/v/clip.avi#{i}", img) for i in range(80)]
    samples += [Sample(f"/p/photo{i}.png", img) for i in range(20)]
    p = sampling_weights(samples, 0.15)
    assert p[:80].sum() == pytest.approx(0.15) and p.sum() == pytest.approx(1.0)
    assert sampling_weights(samples[:80], 0.15).sum() == pytest.approx(1.0)  # video only
    masks = [np.ones((300, 300), bool)] * len(samples)
    val = _val_tensors(samples, masks, limit=100)
    assert len(val) == 20


def test_crops_are_randomly_downscaled() -> None:
    from icm_codec.train.data import Sample
    from icm_codec.train.trainer import _Batches

    img = np.tile(np.arange(512, dtype=np.uint8)[None, :, None] // 2, (512, 1, 3))
    b = _Batches([Sample("a.png", img)], [np.ones((512, 512), bool)], 128, 0, min_scale=0.5)
    windows = {b._window(img) for _ in range(50)}
    assert min(windows) >= 128 and max(windows) <= 256 and len(windows) > 5
    x, m = b.next(4)
    assert x.shape == (4, 3, 128, 128) and m.shape == (4, 1, 128, 128)


def test_outside_weight_counts_the_pixels_outside_the_mask_at_that_weight(tmp_path: Path
                                                                           ) -> None:
    from icm_codec.train.config import TrainConfig
    from icm_codec.train.trainer import train

    x = torch.zeros(1, 3, 4, 4)
    x_hat = torch.full_like(x, 0.1)
    x_hat[..., :, 2:] = 0.3  # the right half (outside the mask) is further off
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1
    out = {"x_hat": x_hat, "likelihoods": {"y": torch.ones(1), "z": torch.ones(1)}}
    inside, outside = 0.1**2 / 2, 0.3**2 / 2  # each half's share of the mean squared error
    for w, want in ((0.0, inside), (0.1, inside + 0.1 * outside), (1.0, inside + outside)):
        mse = rate_distortion_loss(out, x, 0.01, loss_weights(mask, w))["mse"]
        assert float(mse) == pytest.approx(want, rel=1e-5)
    assert loss_weights(mask, 0.0) is mask  # SA-ICM's loss is untouched
    with pytest.raises(ValueError, match=r"--outside-weight must lie in \[0, 1\]"):
        train(TrainConfig(kind="base", data=[str(tmp_path)], lmbda=0.01,
                          out=str(tmp_path / "run"), outside_weight=1.5), progress=False)


def test_a_diverged_run_goes_back_to_its_last_healthy_state() -> None:
    from icm_codec.train.guard import DivergenceGuard, validation_objective

    model = _small()
    opt, aux_opt = make_optimizers(model, 1e-3)
    ema = WeightEMA(model, 0.9)
    guard = DivergenceGuard({"model": model, "opt": opt, "aux_opt": aux_opt, "ema": ema}, 0.2)
    x = torch.rand(1, 3, 64, 64)

    def train_a_step() -> None:
        out = model(x)
        loss = rate_distortion_loss(out, x, 0.01)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)

    train_a_step()
    assert not guard.check(1.0, 500)
    train_a_step()
    assert not guard.check(0.9, 1000)  # the best so far: its state is the snapshot
    healthy = {k: v.clone() for k, v in model.state_dict().items()}
    healthy_opt = copy.deepcopy(opt.state_dict()["state"])
    train_a_step()
    assert not guard.check(1.05, 1500)  # within 20 % of the best: healthy, a new snapshot
    healthy = {k: v.clone() for k, v in model.state_dict().items()}
    healthy_opt = copy.deepcopy(opt.state_dict()["state"])
    for _ in range(3):
        train_a_step()
    assert guard.check(1.2, 2000)  # 33 % above the best
    assert guard.restore() == 1500 and guard.rollbacks == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, healthy[k]), k
    for i, st in opt.state_dict()["state"].items():
        assert torch.equal(st["exp_avg"], healthy_opt[i]["exp_avg"])
    assert guard.check(float("nan"), 2500)  # NaN weights diverged too
    assert not DivergenceGuard({"model": model}, 0.0).check(float("nan"), 0)  # 0: off
    row = {"val_bpp": 0.5, "val_psnr": 30.0, "val_psnr_mask": float("nan")}
    assert validation_objective(row, 0.01, masked=True) == pytest.approx(0.5 + 0.01 * 65.025)


def test_the_trainer_rolls_a_blown_up_run_back_to_where_it_started(tmp_path: Path, photos,
                                                                    capsys) -> None:
    """A rate of 1.0 wrecks the weights within two steps; the first validation finds it and
    the trainer goes back to the state it started from (validated before the first step)."""
    from icm_codec import load_package
    from icm_codec.train.config import TrainConfig
    from icm_codec.train.trainer import train

    data = tmp_path / "pics"
    data.mkdir()
    for i, p in enumerate(photos[:4]):
        Image.fromarray(p[:128, :128]).save(data / f"p{i}.png")
    out = tmp_path / "run"
    cfg = TrainConfig(kind="single", data=[str(data)], lmbda=0.01, out=str(out), N=32, crop=64,
                      batch=1, steps=2, lr=1.0, warmup=0, decay=1, val_every=2, threads=1)
    train(cfg, progress=False)
    text = capsys.readouterr().out
    assert "step 2: diverged" in text and "back to the weights of step 0" in text
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["schedule"]["peak"] == 0.5  # halved, and kept for a resumed run
    weights = load_package(out / "model.icmpkg").model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# -- warm starts -----------------------------------------------------------------------------
def test_enhancement_warm_start_begins_at_the_base_quality(tmp_path: Path) -> None:
    """From a single-layer trunk: g_human is the trunk's synthesis and ŷa starts at zero, so
    the first human image is the trunk's decoding of the base latent."""
    from icm_codec import load_package, save_package
    from icm_codec.train.trainer import warm_start

    torch.manual_seed(0)
    trunk = _small("single")
    trunk.freeze()
    save_package(trunk, tmp_path / "trunk.icmpkg")
    base = _small("base")
    rec = warm_start(base, str(tmp_path / "trunk.icmpkg"))
    assert rec.copied == rec.total and rec.steps == 0
    enh = _small("enhancement", m=2)
    rec = warm_start(enh, str(tmp_path / "trunk.icmpkg"))
    assert 0 < rec.copied < rec.total
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y_base = base.coder(base.g_a(x))["y_hat"]
        out = enh.eval()(x, y_base)
        assert float(out["y_hat"].abs().max()) == 0.0
        shipped_trunk = load_package(tmp_path / "trunk.icmpkg").model  # fp16 transforms
        np.testing.assert_allclose(out["x_hat"], shipped_trunk.g_s(y_base), atol=1e-6)


def test_a_wider_model_starts_exactly_where_the_narrower_one_was(tmp_path: Path) -> None:
    """--init from a narrower package (N 32 -> 48): every tensor is used, the decoded image is
    the narrower model's, and the new channels are live (their gradients are not zero)."""
    from icm_codec import load_package, save_package
    from icm_codec.train.trainer import warm_start

    torch.manual_seed(0)
    narrow = _small("single", arch="gdn")
    narrow.freeze()
    save_package(narrow, tmp_path / "narrow.icmpkg")
    narrow = load_package(tmp_path / "narrow.icmpkg").model
    torch.manual_seed(1)
    wide = create_model(CodecConfig(kind="single", arch="gdn", N=48, hyper_channels=8,
                                    feature_channels=32, context_channels=16))
    rec = warm_start(wide, str(tmp_path / "narrow.icmpkg"))
    assert rec.copied == rec.total
    x = torch.rand(1, 3, 64, 64)
    narrow.eval()
    wide.eval()
    with torch.no_grad():
        y_n, y_w = narrow.g_a(x), wide.g_a(x)
        np.testing.assert_allclose(y_w, y_n, atol=1e-5)
        np.testing.assert_allclose(wide.g_s(y_n), narrow.g_s(y_n), atol=1e-5)
    wide.g_s(wide.g_a(x)).square().mean().backward()
    first = wide.g_a[0].weight       # conv(3, N/4): 8 -> 12 output channels
    second = wide.g_a[2].weight      # the next convolution's weights from the new channels
    assert first.shape[0] == 12 and float(second.grad[:, 8:].abs().sum()) > 0


# -- the training plan -----------------------------------------------------------------------
def test_plan_selects_jobs_by_id_lists() -> None:
    """`--only a b`, `--only a,b` and a mix pick the same jobs, in dependency order; a typo is
    an error that names it (compare used to answer an empty table)."""
    from icm_codec.train.plan import DEFAULT_PLAN, load_plan

    plan = load_plan(DEFAULT_PLAN)
    first, second = (j.id for j in plan.order()[:2])
    want = [first, second]
    assert [j.id for j in plan.selected([second, first])] == want
    assert [j.id for j in plan.selected([f"{second},{first}"])] == want
    assert [j.id for j in plan.selected([f"{second},", first])] == want
    assert len(plan.selected(None)) == len(plan.selected([])) == len(plan.jobs)
    with pytest.raises(ValueError, match="no such job in the plan: \\['nope'\\]"):
        plan.selected([f"{first},nope"])


def test_shipped_plan_is_consistent() -> None:
    from icm_codec.train.plan import DEFAULT_PLAN, load_plan

    plan = load_plan(DEFAULT_PLAN)
    order = [j.id for j in plan.order()]
    for job in plan.jobs.values():
        assert all(order.index(n) < order.index(job.id) for n in job.needs)
    kinds = {j.kind for j in plan.jobs.values()}
    assert kinds == {"single", "base", "enhancement", "dc"}


@pytest.mark.parametrize("text, message", [
    ('[[job]]\nid="a"\nkind="single"\nlambda=0.01\nsteps=5\nbogus=1\n', "unknown keys"),
    ('[[job]]\nid="a"\nkind="single"\nlambda=0.01\nsteps=5\ninit="b"\n', "unknown job"),
    ('[[job]]\nid="a"\nkind="enhancement"\nlambda=0.01\nsteps=5\n', "needs a base"),
    ('[[job]]\nid="a"\nkind="single"\nlambda=0.01\nsteps=5\ninit="b"\n'
     '[[job]]\nid="b"\nkind="single"\nlambda=0.01\nsteps=5\ninit="a"\n', "cycle"),
    ('[[job]]\nid="a"\nkind="single"\nsteps=5\n', "needs lambda"),
])
def test_bad_plans_are_refused(tmp_path: Path, text: str, message: str) -> None:
    from icm_codec.train.plan import load_plan

    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_plan(tmp_path / "p.toml")


def test_a_job_whose_dependency_is_left_out_is_reported_not_skipped(tmp_path: Path,
                                                                     capsys) -> None:
    """`--only` a job whose warm start is unfinished and not in the run: nothing can start,
    and the runner says why and fails (it used to exit 0 having trained nothing)."""
    from icm_codec.train.plan import load_plan, run_plan

    (tmp_path / "plan.toml").write_text(
        '[[job]]\nid = "trunk"\nkind = "single"\nlambda = 0.01\nsteps = 3\n'
        '[[job]]\nid = "low"\nkind = "single"\nlambda = 0.003\nsteps = 2\ninit = "trunk"\n')
    plan = load_plan(tmp_path / "plan.toml")
    assert run_plan(plan, tmp_path / "runs", tmp_path, only=["low"], poll_s=0.01) == 1
    assert "low not started: it needs trunk finished first" in capsys.readouterr().out


@pytest.mark.slow
def test_plan_runs_resumes_and_continues_a_shipped_run(tmp_path: Path, photos) -> None:
    """Two dependent jobs run as real `icm train` processes; a finished plan starts nothing;
    a job whose checkpoint is gone continues from its shipped package at its step count."""
    from icm_codec import load_package
    from icm_codec.train.plan import job_status, load_plan, run_plan, train_args

    data = tmp_path / "data" / "pics"
    data.mkdir(parents=True)
    for i, p in enumerate(photos):
        Image.fromarray(p[:256, :256]).save(data / f"p{i}.png")
    (tmp_path / "plan.toml").write_text(
        '[defaults]\ndata = ["pics"]\nN = 32\ncrop = 64\nwarmup = 1\ndecay = 2\n'
        'val_every = 2\n'
        '[[job]]\nid = "single-t"\nkind = "single"\nlambda = 0.01\nsteps = 3\n'
        '[[job]]\nid = "enh-t"\nkind = "enhancement"\nm = 2\nlambda = 0.01\nsteps = 2\n'
        'base = "single-t"\ninit = "single-t"\n')
    plan = load_plan(tmp_path / "plan.toml")
    runs = tmp_path / "runs"
    assert run_plan(plan, runs, tmp_path / "data", poll_s=0.2, nice=0) == 0
    assert all(job_status(j, runs)["finished"] for j in plan.jobs.values())
    enh = load_package(runs / "enh-t" / "model.icmpkg")
    trunk = load_package(runs / "single-t" / "model.icmpkg")
    assert enh.config.base_digest == trunk.digest
    assert enh.config.meta["plan_job"] == "enh-t" and enh.config.meta["init"]["model_id"] == \
        "single-t"
    assert enh.config.meta["schedule"]["end"] == 2
    # a shipped package of this job, no checkpoint: the next session continues from it
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (runs / "single-t" / "model.icmpkg").replace(shipped / "single-t.icmpkg")
    (runs / "single-t" / "last.pt").unlink()
    args = train_args(plan.jobs["single-t"], plan, runs, tmp_path / "data", "cpu",
                      shipped=shipped)
    assert args[args.index("--init") + 1] == str(shipped / "single-t.icmpkg")
    # a fresh machine (no run of single-t at all): its shipped package, trained to the plan's
    # step count, counts as finished and is what the dependent job starts from and refines
    assert job_status(plan.jobs["single-t"], runs, shipped)["finished"]
    enh_args = train_args(plan.jobs["enh-t"], plan, runs, tmp_path / "data", "cpu",
                          shipped=shipped)
    for flag in ("--init", "--base"):
        assert enh_args[enh_args.index(flag) + 1] == str(shipped / "single-t.icmpkg")
    from icm_app.main import main

    args[args.index("--steps") + 1] = "5"
    assert main(["train", *args]) == 0
    cont = load_package(runs / "single-t" / "model.icmpkg")
    assert cont.config.meta["steps"] == 5 and cont.config.meta["init"]["steps"] == 3
    assert not math.isnan(cont.config.meta["lambda"])


def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    from icm_codec.train.trainer import run_in_use, run_lock

    assert not run_in_use(tmp_path)
    with run_lock(tmp_path):
        assert run_in_use(tmp_path)
        with pytest.raises(ValueError, match="in use by another training process"), \
                run_lock(tmp_path):
            pass
    assert not run_in_use(tmp_path)


def test_score_package_is_the_training_objective_on_real_bytes(package_factory,
                                                               photos) -> None:
    from icm_codec.train.score import score_package
    from icm_eval.metrics import psnr8

    single = package_factory("single", N=32)
    images = [("a", photos[0][:64, :96]), ("b", photos[1][:64, :96])]
    s = score_package(single, images, lmbda=0.01)
    assert s.bpp == s.total_bpp > 0 and s.psnr == s.psnr_mask
    one = score_package(single, images[:1], lmbda=0.01)
    assert one.objective == pytest.approx(one.bpp + 0.01 * 255**2 * 10 ** (-one.psnr / 10))
    from icm_codec import ScalableCodec

    codec = ScalableCodec.load(single)
    dec = codec.decode_machine(codec.encode_base(images[0][1]))
    assert psnr8(images[0][1], dec) == pytest.approx(
        score_package(single, images[:1]).psnr, abs=1e-6)
    enh = package_factory("enhancement", m=2, base=package_factory("base", N=128))
    with pytest.raises(ValueError, match="pass its base package"):
        score_package(enh, images)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_background_trainer_stopped_by_a_signal_keeps_what_it_learned(
        tmp_path: Path, photos, stop: str) -> None:
    """`kill` (SIGTERM) or Ctrl-C sent to a trainer started by a non-interactive shell (which
    starts it with SIGINT ignored) checkpoints and exports; both signals used to lose every
    step since the last checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from icm_codec import load_package

    data = tmp_path / "pics"
    data.mkdir()
    for i, p in enumerate(photos[:2]):
        Image.fromarray(p[:128, :128]).save(data / f"p{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "icm_codec.cli", "train", "single", "--data", str(data),
           "--out", str(out), "--lambda", "0.01", "--N", "32", "--crop", "64", "--batch", "1",
           "--steps", "100000",
           "--warmup", "1", "--decay", "2", "--val-every", "100000", "--threads", "1",
           "--checkpoint-minutes", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        log = out / "metrics.csv"
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the trainer never logged a step"
            time.sleep(0.2)
        proc.send_signal(getattr(signal, stop))
        text = proc.communicate(timeout=120)[0].decode()
    finally:
        proc.kill()
    assert proc.returncode == 0, text
    assert "interrupted at step" in text
    steps = load_package(out / "model.icmpkg").config.meta["steps"]
    assert steps >= 20
    assert torch.load(out / "last.pt", weights_only=False)["step"] == steps


def test_plan_jobs_are_niced_in_their_own_scheduling_group(tmp_path: Path) -> None:
    """A job runs in its own session; under autogroups its nice value only counts inside that
    group, so the runner nices the group as well."""
    import os
    import sys
    import time

    from icm_codec.train.plan import _launch

    group = Path("/proc/self/autogroup")
    try:  # writing back our own group's value tells whether groups can be niced here
        group.write_text(group.read_text().split()[-1])
    except (OSError, IndexError):
        pytest.skip("no autogroups to nice here (/proc/self/autogroup absent or read-only)")

    proc = _launch([sys.executable, "-c", "import time; time.sleep(5)"], tmp_path / "log",
                   None, 7)
    try:
        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline and "nice 7" not in text:
            text = Path(f"/proc/{proc.pid}/autogroup").read_text()
            time.sleep(0.05)
        assert text.strip().endswith("nice 7"), text
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(own + 7, 19)
    finally:
        proc.kill()
        proc.wait()
