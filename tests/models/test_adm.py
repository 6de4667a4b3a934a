"""OpenAI's ADM checkpoints on art-some's own UNet: layouts, refusals, numerics, the denoiser, the cascade, tuning."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from art_some import DenoisedMultiScaleClassifier, DiffusionCalibrationTrainer
from art_some.models import adm
from art_some.models.diffusion import create_denoiser, load_adm, randomize, tiny_adm_config

# ---------------------------------------------------------------------------------------------------------------
# Key-for-key layouts of the two released files
# ---------------------------------------------------------------------------------------------------------------
# Shapes derived by hand from the published hyperparameters (not from the module): the stem, the time embedding,
# a downsampling/upsampling layer, an attention layer at the right resolution, the middle attention, the output.
RELEASED_SHAPES = {
    "adm-cifar10-uncond-50m": {  # 128 channels, mult (1, 2, 2, 2), 3 blocks, attention at 16 and 8 px, 6 out
        "time_embed.0.weight": (512, 128), "time_embed.2.weight": (512, 512),
        "input_blocks.0.0.weight": (128, 3, 3, 3),
        "input_blocks.4.0.op.weight": (128, 128, 3, 3),  # Downsample after level 0's three blocks
        "input_blocks.5.0.skip_connection.weight": (256, 128, 1, 1),
        "input_blocks.5.0.emb_layers.1.weight": (512, 512),  # scale-shift norm: 2 x 256
        "input_blocks.5.1.qkv.weight": (768, 256, 1),  # 16 px: attention
        "input_blocks.15.0.in_layers.2.weight": (256, 256, 3, 3),
        "middle_block.1.qkv.weight": (768, 256, 1), "middle_block.1.proj_out.weight": (256, 256, 1),
        "output_blocks.0.0.in_layers.0.weight": (512,),
        "output_blocks.3.1.conv.weight": (256, 256, 3, 3),  # 4 px level: no attention, then Upsample
        "output_blocks.7.2.conv.weight": (256, 256, 3, 3),  # 8 px level: attention, then Upsample
        "output_blocks.15.0.skip_connection.weight": (128, 256, 1, 1),
        "out.0.weight": (128,), "out.2.weight": (6, 128, 3, 3),
    },
    "adm-imagenet256-uncond": {  # 256 channels, mult (1, 1, 2, 2, 4, 4), 2 blocks, heads of 64 at 32/16/8 px
        "time_embed.0.weight": (1024, 256), "input_blocks.0.0.weight": (256, 3, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (512, 1024),
        "input_blocks.3.0.in_layers.0.weight": (256,),  # a residual block downsamples (resblock_updown)
        "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),
        "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # 32 px: attention
        "input_blocks.17.1.qkv.weight": (3072, 1024, 1),
        "middle_block.1.qkv.weight": (3072, 1024, 1),
        "output_blocks.17.0.skip_connection.weight": (256, 512, 1, 1),
        "out.2.weight": (6, 256, 3, 3),
    },
}
# Parameter counts: "50M" in the CIFAR-10 file's name; the ADM paper gives 554M for ImageNet 256, the
# class-conditional model, i.e. this one plus a 1000 x 1024 label embedding.
PARAMS = {"adm-cifar10-uncond-50m": (52.0e6, 53.0e6), "adm-imagenet256-uncond": (554e6 - 1.3e6, 554e6 - 0.8e6)}


@pytest.mark.parametrize("name", sorted(adm.RELEASED))
def test_released_layout_loads_key_for_key(name):
    shapes = adm.layout(name)  # meta device: nothing allocated
    for key, shape in RELEASED_SHAPES[name].items():
        assert shapes[key] == shape, key
    assert "label_emb.weight" not in shapes
    low, high = PARAMS[name]
    assert low <= sum(math.prod(s) for s in shapes.values()) <= high
    assert not any(".op." in k for k in shapes) if name == "adm-imagenet256-uncond" else True
    # A state dict in that layout (meta tensors stand for the file's) loads with no missing or unexpected key,
    # and its config is detected from it.
    state = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in shapes.items()}
    assert adm.detect_config(state) == name
    with torch.device("meta"):
        unet = adm.ADMUNet(name)
    result = unet.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_released_cifar10_file_round_trip_in_fp16(tmp_path):
    # The released layout in fp16 (as the research code's fp16 training keeps its convolutions), zeros but one.
    state = {k: torch.zeros(s, dtype=torch.float16) for k, s in adm.layout("adm-cifar10-uncond-50m").items()}
    state["input_blocks.0.0.weight"] = torch.randn(128, 3, 3, 3).half()
    torch.save(state, tmp_path / "cifar10_uncond_50M_500K.pt")
    den = load_adm(tmp_path / "cifar10_uncond_50M_500K.pt")  # detected: no config given
    assert den.adm_config["num_channels"] == 128 and den.adm_config["family"] == "improved"
    params = dict(den.unet.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert torch.equal(params["input_blocks.0.0.weight"], state["input_blocks.0.0.weight"].float())
    # The schedule and the timestep convention: cosine, T = 4000, timesteps rescaled to 1000.
    assert den.num_train_timesteps == 4000 and den.timestep_scale == 0.25
    assert [den.timestep(s) for s in (0.12, 0.25, 0.5, 1.0)] == [573, 1158, 1984, 2809]


def test_schedules_match_the_spec_table():
    from art_some.models.diffusion import DiffusionDenoiser

    linear = DiffusionDenoiser(torch.nn.Identity(), adm.adm_alphas_cumprod("linear", 1000))
    assert [linear.timestep(s) for s in (0.12, 0.25, 0.5, 1.0)] == [70, 145, 259, 396]
    from diffusers import DDPMScheduler

    cosine = DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    assert torch.allclose(adm.adm_alphas_cumprod("cosine", 4000), cosine, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Refusals: one line naming the file and the keys
# ---------------------------------------------------------------------------------------------------------------
def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def tiny_file(tmp_path):
    cfg = tiny_adm_config()
    path = tmp_path / "tiny_adm.pt"
    torch.save(randomize(adm.ADMUNet(cfg), 1).state_dict(), path)
    return path, cfg


def test_truncated_and_foreign_files_are_refused_in_one_line(tiny_file, tmp_path):
    path, cfg = tiny_file
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        load_adm(cut, cfg)
    assert str(cut) in one_line(err)
    state = torch.load(path, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i % 7}, partial)
    with pytest.raises(ValueError) as err:
        load_adm(partial, cfg)
    text = one_line(err)
    assert str(partial) in text and "missing" in text and "time_embed.0.weight" in text
    from art_some.models.diffusion import tiny_unet

    foreign = tmp_path / "diffusers_unet.pt"
    torch.save(tiny_unet().state_dict(), foreign)
    with pytest.raises(ValueError) as err:
        load_adm(foreign)  # nothing to detect
    text = one_line(err)
    assert str(foreign) in text and "conv_in.weight" in text
    with pytest.raises(ValueError) as err:
        load_adm(foreign, cfg)
    text = one_line(err)
    assert str(foreign) in text and "missing" in text and "conv_in.weight" in text
    with pytest.raises(ValueError) as err:
        load_adm(path, {**cfg, "num_channels": 64})
    assert str(path) in one_line(err)
    with pytest.raises(ValueError) as err:
        load_adm(path)  # an ADM layout, but not a released one: heads do not show in shapes, so name the config
    assert str(path) in one_line(err) and "name its config" in str(err.value)
    with pytest.raises(FileNotFoundError):
        load_adm(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="neither a released config"):
        load_adm(path, "adm-cifar10")
    with pytest.raises(ValueError, match="unknown ADM option"):
        load_adm(path, {**cfg, "num_chanels": 32})


def test_config_as_name_dict_json_and_file(tiny_file, tmp_path):
    import json

    path, cfg = tiny_file
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    outs = [load_adm(path, c)(torch.full((1, 1, 8, 8), 0.3), 0.25)
            for c in (cfg, json.dumps(cfg), str(tmp_path / "cfg.json"))]
    assert all(torch.equal(outs[0], o) for o in outs)
    den = create_denoiser("adm", path=str(path), config=cfg)
    assert torch.equal(den(torch.full((1, 1, 8, 8), 0.3), 0.25), outs[0])
    # The research code's own options carry over, the ones the denoiser does not read ignored.
    assert adm.ADMConfig.from_options({**cfg, "timestep_respacing": "", "use_kl": False}).num_channels == 32
    with pytest.raises(ValueError, match="predict_xstart"):
        adm.ADMConfig.from_options({**cfg, "predict_xstart": True})


# ---------------------------------------------------------------------------------------------------------------
# Numerics against an independent computation (a functional forward over the state dict's keys)
# ---------------------------------------------------------------------------------------------------------------
def ref_forward(sd, cfg, x, t, y=None):
    """The research code's UNet written out over a state dict, loops over heads, by hand."""
    mc, nrb = cfg.num_channels, cfg.num_res_blocks
    levels = len(cfg.mults())
    ssn = cfg.use_scale_shift_norm

    def gn(h, p):
        c = h.shape[1]
        g = h.reshape(h.shape[0], min(32, c), -1)
        g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
        shape = (1, c) + (1,) * (h.dim() - 2)
        return g.reshape(h.shape) * sd[p + ".weight"].view(shape) + sd[p + ".bias"].view(shape)

    def conv(h, p, **kw):
        return F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], **kw)

    def silu(h):
        return h * torch.sigmoid(h)

    def res(h, emb, p, up=False, down=False):
        a = silu(gn(h, p + ".in_layers.0"))
        if up:
            a, h = a.repeat_interleave(2, 2).repeat_interleave(2, 3), h.repeat_interleave(2, 2).repeat_interleave(2, 3)
        if down:
            a, h = F.avg_pool2d(a, 2), F.avg_pool2d(h, 2)
        a = conv(a, p + ".in_layers.2", padding=1)
        e = (silu(emb) @ sd[p + ".emb_layers.1.weight"].T + sd[p + ".emb_layers.1.bias"])[:, :, None, None]
        if ssn:
            half = e.shape[1] // 2
            a = gn(a, p + ".out_layers.0") * (1 + e[:, :half]) + e[:, half:]
        else:
            a = gn(a + e, p + ".out_layers.0")
        a = conv(silu(a), p + ".out_layers.3", padding=1)
        skip = conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attn(h, p, heads):
        b, c, hh, ww = h.shape
        flat = h.reshape(b, c, -1)
        qkv = torch.einsum("oc,bct->bot", sd[p + ".qkv.weight"][:, :, 0], gn(flat, p + ".norm")) \
            + sd[p + ".qkv.bias"][None, :, None]
        if cfg.num_head_channels != -1:
            heads = c // cfg.num_head_channels
        d = c // heads
        out = torch.zeros_like(flat)
        for i in range(heads):
            if cfg.use_new_attention_order:
                q, k, v = (qkv[:, j * c + i * d: j * c + (i + 1) * d] for j in range(3))
            else:
                block = qkv[:, 3 * d * i: 3 * d * (i + 1)]
                q, k, v = block[:, :d], block[:, d:2 * d], block[:, 2 * d:]
            w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
            out[:, i * d:(i + 1) * d] = torch.einsum("bts,bcs->bct", w, v)
        proj = torch.einsum("oc,bct->bot", sd[p + ".proj_out.weight"][:, :, 0], out) \
            + sd[p + ".proj_out.bias"][None, :, None]
        return (flat + proj).reshape(b, c, hh, ww)

    half = mc // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    emb = silu(emb @ sd["time_embed.0.weight"].T + sd["time_embed.0.bias"])
    emb = emb @ sd["time_embed.2.weight"].T + sd["time_embed.2.bias"]
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]
    heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

    def run(block, h, p, heads, resample):
        j = 0
        while any(k.startswith(f"{p}.{j}.") for k in sd):
            q = f"{p}.{j}"
            if q + ".in_layers.0.weight" in sd:
                last = not any(k.startswith(f"{p}.{j + 1}.") for k in sd)
                h = res(h, emb, q, up=resample == "up" and last and cfg.resblock_updown,
                        down=resample == "down" and cfg.resblock_updown)
            elif q + ".qkv.weight" in sd:
                h = attn(h, q, heads)
            elif q + ".op.weight" in sd:
                h = conv(h, q + ".op", stride=2, padding=1)
            elif q + ".conv.weight" in sd:
                h = conv(h.repeat_interleave(2, 2).repeat_interleave(2, 3), q + ".conv", padding=1)
            else:
                h = conv(h, q, padding=1)
            j += 1
        return h

    downs = {(lv + 1) * (nrb + 1) for lv in range(levels - 1)}
    hs, h = [], x
    for i in range(1 + levels * nrb + levels - 1):
        h = run("in", h, f"input_blocks.{i}", cfg.num_heads, "down" if i in downs else None)
        hs.append(h)
    h = run("mid", h, "middle_block", cfg.num_heads, None)
    for i in range(levels * (nrb + 1)):
        level, k = levels - 1 - i // (nrb + 1), i % (nrb + 1)
        h = run("out", torch.cat([h, hs.pop()], 1), f"output_blocks.{i}", heads_up,
                "up" if level and k == nrb else None)
    return conv(silu(gn(h, "out.0")), "out.2", padding=1)


FAMILY_CONFIGS = {
    # improved-diffusion: Downsample/Upsample convolutions, legacy attention, no scale-shift norm
    "improved": dict(family="improved", image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                     attention_resolutions="4", num_heads=2, learn_sigma=True, use_scale_shift_norm=False,
                     diffusion_steps=4000, noise_schedule="cosine"),
    # guided-diffusion: residual up/down-sampling, heads of 16 channels in the new order, scale-shift norm, classes
    "guided": dict(family="guided", image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                   attention_resolutions="8,4", num_head_channels=16, use_new_attention_order=True,
                   resblock_updown=True, use_scale_shift_norm=True, class_cond=True, num_classes=5),
    "guided-legacy": dict(family="guided", image_size=8, num_channels=32, num_res_blocks=2, channel_mult=(1, 2),
                          attention_resolutions="4", num_heads=4, num_heads_upsample=2, use_scale_shift_norm=True,
                          learn_sigma=True),
}


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_unet_matches_the_computation_by_hand(family):
    cfg = adm.ADMConfig.from_options(FAMILY_CONFIGS[family])
    unet = randomize(adm.ADMUNet(cfg), seed=3, scale=0.2).eval()
    sd = {k: v.detach() for k, v in unet.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    t = torch.tensor([17.0, 512.5])  # fractional: the rescaled convention
    y = torch.tensor([1, 4]) if cfg.class_cond else None
    with torch.no_grad():
        got, want = unet(x, t, y), ref_forward(sd, cfg, x, t, y)
    assert got.shape == (2, cfg.out_channels(), 8, 8)
    assert float(want.abs().mean()) > 0.05  # not a trivially zero output
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-4), float((got - want).abs().max())
    if cfg.class_cond:
        with pytest.raises(ValueError, match="class-conditional"):
            unet(x, t)


def test_one_shot_step_is_the_closed_form_with_the_rescaled_timestep():
    cfg = adm.ADMConfig.from_options({**FAMILY_CONFIGS["improved"], "in_channels": 1})
    unet = randomize(adm.ADMUNet(cfg), seed=5, scale=0.2).eval()
    from art_some.models.diffusion import DiffusionDenoiser

    den = DiffusionDenoiser(unet, adm.adm_alphas_cumprod("cosine", 4000), rescale_timesteps=True,
                            clip_denoised=False)
    z = torch.rand(3, 1, 8, 8)
    sigma = 0.5
    t = den.timestep(sigma)
    abar = float(adm.adm_alphas_cumprod("cosine", 4000)[t])
    x_in = math.sqrt(abar) * (2 * z - 1)
    with torch.no_grad():
        eps = unet(x_in, torch.full((3,), t * 1000 / 4000))[:, :1]  # learned sigma: epsilon first
        x0 = (x_in - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        assert torch.allclose(den(z, sigma), (x0 + 1) / 2, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Zero weights: the identity; the soundness suite's identity-denoiser check through the ADM path
# ---------------------------------------------------------------------------------------------------------------
def zero_adm(**kwargs):
    """ADM's own initialisation zeroes the output convolutions: epsilon = 0, so x0 is the (scaled back) input."""
    return create_denoiser("tiny_adm", seed=None, clip_denoised=False, num_channels=8, channel_mult=(1,),
                           attention_resolutions="", **kwargs)


def test_zero_weights_denoise_as_the_identity():
    den = zero_adm()
    z = torch.rand(4, 1, 8, 8) * 3 - 1
    for sigma in (0.25, 0.5, 1.0):
        assert torch.allclose(den(z, sigma), z, atol=1e-5)


def test_cascade_is_sound_through_the_adm_path_with_zero_weights():
    from tests.estimators.test_denoised import SIGMAS, Threshold, exact_cascade, true_radius

    u = np.array([-1.2, 0.05, 1.4])
    x = np.zeros((len(u), 1, 8, 8), np.float32)
    x[:, 0, 0, 0] = u
    est = DenoisedMultiScaleClassifier(Threshold(), None, (1, 8, 8), 3, denoiser=zero_adm(), sigmas=SIGMAS,
                                       device_type="cpu", clip_values=None, sample_size=100, noise_batch_size=2000)
    res = est.certify_detailed(x, n=1000, alpha=0.001)
    for i in np.flatnonzero(res.predict >= 0):
        assert res.predict[i] == exact_cascade(u[i], SIGMAS)
        assert res.radius[i] <= true_radius(u[i], res.predict[i], SIGMAS) + 1e-6
    assert (res.predict >= 0).sum() >= 2


# ---------------------------------------------------------------------------------------------------------------
# Diffusion calibration tunes an ADM denoiser
# ---------------------------------------------------------------------------------------------------------------
def test_diffusion_calibration_tunes_the_adm_unet():
    from art_some.models import DigitsCNN

    torch.manual_seed(0)
    clf_net = DigitsCNN()
    den = create_denoiser("tiny_adm", seed=2)
    est = DenoisedMultiScaleClassifier(clf_net, None, (1, 8, 8), 10, denoiser=den, sigmas=(0.25, 0.5),
                                       device_type="cpu", clip_values=(0.0, 1.0), sample_size=10)
    before = {k: v.clone() for k, v in den.state_dict().items()}
    frozen = {k: v.clone() for k, v in clf_net.state_dict().items()}
    trainer = DiffusionCalibrationTrainer(est, optimizer=torch.optim.SGD(den.parameters(), lr=0.05),
                                          num_noise_vec=2, mse_weight=0.1)
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    y = np.arange(8) % 10
    trainer.fit(x, y, batch_size=8, nb_epochs=1)
    changed = [k for k, v in den.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert all(torch.equal(v, frozen[k]) for k, v in clf_net.state_dict().items())
    assert not den.training and all(p.requires_grad for p in den.parameters())


def test_art_some_train_tunes_an_adm_denoiser_and_certify_loads_it(tmp_path):
    # diffusion_calibration on a tiny ADM UNet: the tuned UNet is saved in the released layout (adm.safetensors,
    # which load_adm reads) and certify rebuilds the cascade from the checkpoint alone.
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from art_some.cli import cli
    from art_some.runs.records import read_jsonl

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    cpu = ["--device", "cpu"]
    classifier = tmp_path / "classifier"
    assert run("train", "--method", "gaussian", "--model", "digits_cnn", "--epochs", 1, *cpu, "--output-dir",
               classifier).exit_code == 0
    out = tmp_path / "calibrated"
    result = run("train", "--method", "diffusion_calibration", "--model", classifier / "model.safetensors",
                 "--denoiser", "tiny_adm", "--optimizer", "adam", "--lr", "1e-3", "--option", "num_noise_vec=1",
                 "--epochs", 1, *cpu, "--output-dir", out)
    assert result.exit_code == 0, result.output
    tuned = load_file(out / "denoiser" / "adm.safetensors")
    assert "input_blocks.0.0.weight" in tuned and "out.2.weight" in tuned  # the released layout's names
    records = tmp_path / "r.jsonl"
    result = run("certify", "--model", out / "model.safetensors", "--n0", 10, "--n", 100, "--max-inputs", 2, *cpu,
                 "--output", records)
    assert result.exit_code == 0, result.output
    assert read_jsonl(records)[0]["method"] == "denoised_multiscale"
