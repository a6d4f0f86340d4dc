"""SPM, AdvUnlearn and SLD pinned to their authors' code: each method's real ``losses()`` and backward pass (SLD: its
sampler) runs on recorded draws of a small random digits UNet (:class:`~unlearnbench.models.CondUNet`), and the
gradient (the samples) must agree to 1e-5 with the reference formula transcribed here (repository and file cited),
computed from the task's own facts (which prompt is erased, which are kept), not from the method's choices."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from unlearnbench.diffusion import Schedule, ddim_sample, guided
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import make_config
from unlearnbench.models import CondUNet
from unlearnbench.tasks import TASKS
from unlearnbench.tasks.base import ModelBundle

FORGET = 4  # "digit 3"
MSE = torch.nn.MSELoss()


def digits_bundle(forget=(FORGET,), seed=0) -> ModelBundle:
    """A digits-shaped concept bundle: a random CondUNet moved off its initialisation, a frozen copy as the pretrained
    model, noise standing in for the pool."""
    torch.manual_seed(seed)
    net = CondUNet({"init_seed": seed})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(net).requires_grad_(False).eval()
    return ModelBundle(net=net, ref=ref, schedule=Schedule.linear(1000), kind="concept", data_shape=(1, 8, 8),
                       null_cond=0, forget_concepts=list(forget),
                       retain_concepts=[p for p in range(1, 11) if p not in forget],
                       ref_sampler=lambda c, g: torch.randn((c.shape[0], 1, 8, 8), generator=g),
                       sample_steps=6, guidance=3.0)


def make(name, bundle, seed=0, **kw):
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, {"steps": 3, **kw}, name), bundle, torch.Generator().manual_seed(seed))


def tokens(net, ids):
    """The cross-attention tokens of prompt ids ``ids`` straight from CondUNet's table: [len(ids), 4, 32]."""
    return net.prompt_embedding.weight[torch.as_tensor(ids)].view(len(ids), 4, 32)


def unet_eps(net, x, t, h):
    return net.unet(x, t, encoder_hidden_states=h).sample


def draws(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g)


# -- SPM: Con6924/SPM ---------------------------------------------------------------------------------------------------
def spm_anchor_reference(target, n, gen):
    """src/engine/sampling.py ``sample``: a normalised Gaussian direction accepted with probability ``1 - cos(target,
    noise)``, scaled by ``(random() * 0.4 + 0.8) * ||target||`` (random() here from the same generator)."""
    out = []
    while len(out) < n:
        while True:
            noise = torch.randn(target.view(-1).shape, generator=gen)
            noise = noise / noise.view(-1).norm(dim=-1)
            sim = torch.cosine_similarity(target.view(-1), noise.view(-1), dim=-1)
            if float(torch.rand((), generator=gen)) < 1 - sim:
                break
        scale = float(torch.rand((), generator=gen)) * 0.4 + 0.8
        out.append((scale * noise * target.view(-1).norm(dim=-1)).view_as(target))
    return torch.stack(out)


def test_spm_adapters_are_spm_layers_on_the_transformer_blocks():
    """src/models/spm.py: SPMLayer on every Linear / Conv2d inside Transformer2DModel, rank 1, alpha 1, down
    Kaiming-uniform, up zero: ``org(x) + up(down(x)) * multiplier * alpha / dim``; nothing else trains."""
    b = digits_bundle()
    inside = {f"{n}.{c}" for n, m in b.net.named_modules() if type(m).__name__ == "Transformer2DModel"
              for c, s in m.named_modules() if isinstance(s, (torch.nn.Linear, torch.nn.Conv2d))}
    m = make("spm", b)
    wrapped = {n for n, mod in b.net.named_modules() if hasattr(mod, "lora_A")}
    assert wrapped == inside and any("attn1" in n for n in inside) and any("ff.net" in n for n in inside)
    params = list(m.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for n, p in b.net.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n, p in b.net.named_parameters() if p.requires_grad)
    lin = next(mod for n, mod in b.net.named_modules() if n.endswith("attn2.to_k"))
    down, up = lin.lora_A["default"], lin.lora_B["default"]
    assert down.weight.shape[0] == 1 and up.weight.shape[1] == 1 and float(up.weight.detach().abs().sum()) == 0
    with torch.no_grad():
        up.weight.normal_()
    x = torch.randn(3, 32)
    assert torch.allclose(lin(x), lin.base_layer(x) + up(down(x)) * 1.0 * 1.0 / 1, atol=1e-6)


def test_spm_adapters_save_and_load_back(tmp_path):
    from unlearnbench.saving import load_weights, save_unlearned

    b = digits_bundle()
    make("spm", b)
    with torch.no_grad():
        for n, p in b.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    assert save_unlearned(b.net, tmp_path / "m")["model_format"] == "peft-lora"
    fresh = load_weights(copy.deepcopy(b.ref), tmp_path / "m")
    x, t = draws(7)
    c = torch.tensor([FORGET, 1, 0, 9])
    assert torch.allclose(fresh(x, t, c), b.net(x, t, c), atol=1e-6)
    assert not torch.allclose(b.ref(x, t, c), b.net(x, t, c), atol=1e-4)


def test_spm_loss_and_gradient_match_train_spm():
    """train_spm.py + src/configs/prompt.py ``_erase_with_la``: ``loss = MSE(target, neutral - guidance_scale *
    (positive - neutral)) + la_strength * MSE(anchor_latents, anchor_latents_ori)``; positive / neutral from the
    network off (the pretrained model) at the erased / empty prompt, target and anchor latents with it on, anchors
    around the erased prompt's embedding."""
    b = digits_bundle()
    g_scale, la = 1.5, 1000.0
    m = make("spm", b, eta=g_scale, la_strength=la, n_anchors=6, batch_size=4)
    with torch.no_grad():  # adapters off their zero init, so every parameter has a gradient
        for n, p in b.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x_t, t = draws(1)
    m.spm_batch = lambda: (x_t, t, FORGET)
    state = m.gen.get_state()
    ours = m.objective(m.losses())
    params = list(m.trainable_parameters())
    got = torch.autograd.grad(ours, params)

    gen = torch.Generator()
    gen.set_state(state)
    anchors = spm_anchor_reference(tokens(b.ref, [FORGET])[0], 6, gen)
    c, null = torch.full((4,), FORGET), torch.zeros(4, dtype=torch.long)
    positive, neutral = b.ref(x_t, t, c), b.ref(x_t, t, null)
    erase = MSE(b.net(x_t, t, c), neutral - g_scale * (positive - neutral))
    xa, ta = x_t.repeat(2, 1, 1, 1)[:6], t.repeat(2)[:6]
    anchoring = MSE(unet_eps(b.net, xa, ta, anchors), unet_eps(b.ref, xa, ta, anchors))
    ref = erase + la * anchoring
    want = torch.autograd.grad(ref, params)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5) and float(anchoring) > 0
    for a, e in zip(got, want):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4)


def test_spm_samples_x_t_with_the_adapted_model_from_step_one():
    """train_spm.py: ``timesteps_to = randint(1, max_denoising_steps)``, x_t from ``train_util.diffusion`` of the
    network on (the adapted model) with the erased prompt at guidance 3."""
    b = digits_bundle(forget=(FORGET, 7))
    m = make("spm", b, batch_size=3, ddim_steps=6, seed=5)
    with torch.no_grad():
        for n, p in b.net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    state = m.gen.get_state()
    x_t, t, c = m.spm_batch()
    m.gen.set_state(state)
    concept = [FORGET, 7][int(torch.randint(0, 2, (1,), generator=m.gen))]
    k = int(torch.randint(1, 6, (1,), generator=m.gen))
    expect = ddim_sample(b.schedule, guided(b.net, 0, 3.0), torch.full((3,), concept), (1, 8, 8), 6,
                         generator=m.gen, stop_at=6 - k)
    assert c == concept and torch.allclose(x_t, expect, atol=1e-6)
    assert int(t[0]) == int(torch.linspace(999, 0, 6).round().long()[k])


# -- AdvUnlearn: OPTML-Group/AdvUnlearn ---------------------------------------------------------------------------------
def advunlearn_with_draws(b, **kw):
    """An AdvUnlearn whose x_t draws and retain prompts are recorded tensors: (method, forget draw, retain draw, r)."""
    m = make("advunlearn", b, batch_size=4, retain_batch=3, **kw)
    fx, ft = draws(2)
    rx, rt = draws(3, 3)
    queue, asked, picked = [(fx, ft), (rx, rt)], [], []
    real_pick = m.pick

    def sample_at(prompts, k):
        asked.append(prompts.tolist())
        return queue.pop(0)

    m.sample_at = sample_at
    m.pick = lambda ids, n: (picked.append(real_pick(ids, n)), picked[-1])[1]
    return m, (fx, ft), (rx, rt), (asked, picked)


@pytest.mark.parametrize("attacked", [False, True])
def test_advunlearn_loss_and_gradient_match_get_train_loss_retain(attacked):
    """utils/get_loss.py ``get_train_loss_retain`` (retain_train 'reg'): ``criteria(e_n, e_0 - negative_guidance *
    (e_p - e_0)) + retain_loss_w * criteria(retain_e_n, retain_e_p)``; e_0 / e_p / retain_e_p from ``model_orig``, e_n
    the trained encoder's condition with the adversarial prefix (``prefix_k``) once attacks run, the plain prompt in
    warm-up; the gradient reaches the prompt table and the cross-attention K/V only."""
    b = digits_bundle()
    ng, w = 1.0, 0.7
    m, (fx, ft), (rx, rt), (asked, picked) = advunlearn_with_draws(b, eta=ng, retain_weight=w,
                                                                   warmup=0 if attacked else 5, attack_every=100)
    adv = torch.randn(1, 32)
    m.adv, m.word, m.step = adv, FORGET, 1  # a prefix from an earlier attack; no attack at this step
    ours = m.objective(m.losses())
    (r,) = picked  # the retain prompts: kept prompts (the retain dataset), sampled with their own x_r
    assert set(r.tolist()) <= set(b.retain_concepts) and asked == [[FORGET] * 4, r.tolist()]
    params = list(m.trainable_parameters())
    assert {n for n, p in b.net.named_parameters() if p.requires_grad} == \
        {"prompt_embedding.weight"} | {n for n, _ in b.net.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n}
    got = torch.autograd.grad(ours, params)

    c, null = torch.full((4,), FORGET), torch.zeros(4, dtype=torch.long)
    e_0, e_p = b.ref(fx, ft, null), b.ref(fx, ft, c)
    cond = tokens(b.net, [FORGET] * 4)
    if attacked:
        cond = torch.cat([adv.expand(4, 1, 32), cond], 1)
    e_n = unet_eps(b.net, fx, ft, cond)
    ref = MSE(e_n, e_0 - ng * (e_p - e_0)) + w * MSE(b.net(rx, rt, r), b.ref(rx, rt, r))
    want = torch.autograd.grad(ref, params)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    for a, e in zip(got, want):
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-4)


def test_advunlearn_attack_step_matches_soft_prompt_attack():
    """utils/attack_util.py ``soft_prompt_attack``: ``loss = criteria(e_n, e_p)`` with e_n the trained model at the
    adversarial condition ``[adv; concept]`` and e_p ``model_orig`` at the concept; ``attack_opt`` is Adam on the
    adversarial embedding alone (first step: ``-lr * g / (|g| + 1e-8)``); the network's weights get no gradient."""
    b = digits_bundle()
    m = make("advunlearn", b, attack_steps=1, attack_lr=1e-2, attack_batch=4)
    x, t = draws(4)
    m.sample_at = lambda prompts, k: (x, t)
    adv0 = torch.randn(1, 32)
    m.adv = adv0.clone()
    new = m.attack(FORGET)
    a = adv0.clone().requires_grad_(True)
    c = torch.full((4,), FORGET)
    loss = MSE(unet_eps(b.net, x, t, torch.cat([a.expand(4, 1, 32), tokens(b.net, [FORGET] * 4)], 1)), b.ref(x, t, c))
    (grad,) = torch.autograd.grad(loss, [a])
    assert torch.allclose(new, adv0 - 1e-2 * grad / (grad.abs() + 1e-8), atol=1e-6)
    assert all(p.grad is None for p in b.net.parameters())


def test_advunlearn_attacks_from_warmup_every_update_step_with_the_latest_prefix():
    """AdvUnlearn.py: a new word and attack every ``adv_prompt_update_step`` iterations once ``i >= warmup_iter``;
    ``attack_init='latest'`` starts each attack from the previous prefix."""
    b = digits_bundle()
    m = make("advunlearn", b, warmup=2, attack_every=2, attack_steps=0, batch_size=2, retain_batch=2, ddim_steps=3)
    starts = []
    real = m.attack
    m.attack = lambda c: (starts.append((m.step, None if m.adv is None else m.adv.clone())), real(c))[1]
    for step in range(6):
        m.step = step
        m.losses()
    assert [s for s, _ in starts] == [2, 4]
    assert starts[0][1] is None and torch.equal(starts[1][1], m.adv)


# -- SLD: ml-research/safe-latent-diffusion -----------------------------------------------------------------------------
def sld_pipeline_reference(net, schedule, x, cond, safety, steps, guidance, s):
    """sld/sld_pipeline.py ``SLDPipeline.__call__``'s loop with a DDIM (eta 0) step: uncond / text / safety
    predictions, equations 3-8 (``safety_momentum`` from zeros, ``i >= sld_warmup_steps``), ``noise_pred_uncond +
    guidance_scale * noise_guidance``."""
    abar = schedule.alphas_cumprod.float()
    ts = torch.linspace(schedule.T - 1, 0, steps).round().long()
    momentum = None
    B = x.shape[0]
    for i, t in enumerate(ts):
        tt = t.expand(B)
        e_u, e_t = net(x, tt, torch.zeros_like(cond)), net(x, tt, cond)
        e_s = unet_eps(net, x, tt, safety.expand(B, -1, -1))
        noise_guidance = e_t - e_u
        if momentum is None:
            momentum = torch.zeros_like(noise_guidance)
        scale = torch.clamp(torch.abs(e_t - e_s) * s["guidance_scale"], max=1.)
        safety_concept_scale = torch.where((e_t - e_s) >= s["threshold"], torch.zeros_like(scale), scale)
        noise_guidance_safety = torch.mul(e_s - e_u, safety_concept_scale)
        noise_guidance_safety = noise_guidance_safety + s["momentum_scale"] * momentum
        momentum = s["mom_beta"] * momentum + (1 - s["mom_beta"]) * noise_guidance_safety
        if i >= s["warmup_steps"]:
            noise_guidance = noise_guidance - noise_guidance_safety
        eps = e_u + guidance * noise_guidance
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < steps else torch.ones(())
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_samples_match_the_sld_pipeline(preset):
    """Every guided sampler of the hooked network is the pipeline's: two batches in a row (the momentum and the step
    count start afresh with each trajectory), the safety concept the erased prompts' tokens as one prompt."""
    b = digits_bundle(forget=(FORGET, 8))
    from unlearnbench.methods.sld import PRESETS

    s = dict(PRESETS[preset], warmup_steps=min(PRESETS[preset]["warmup_steps"], 3))
    m = make("sld", b, preset=preset, warmup_steps=s["warmup_steps"])
    m.setup()
    eps = guided(b.net, 0, 3.0)
    cond = torch.tensor([2, FORGET, 8, 5])
    safety = tokens(b.net, [FORGET, 8]).reshape(1, 8, 32)
    for seed in (0, 1):
        x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
        ours = ddim_sample(b.schedule, eps, cond, (1, 8, 8), 6, x_T=x_T)
        with torch.no_grad():
            want = sld_pipeline_reference(b.net, b.schedule, x_T, cond, safety, 6, 3.0, s)
        assert torch.allclose(ours, want, atol=1e-5)
    plain = ddim_sample(b.schedule, guided(b.ref, 0, 3.0), cond, (1, 8, 8), 6, x_T=x_T)
    assert not torch.allclose(ours, plain, atol=1e-4), "the safety guidance changes the samples"


def test_sld_trains_nothing_and_its_hook_is_saved_with_the_model(tmp_path):
    from unlearnbench.runner import train
    from unlearnbench.saving import load_weights, save_unlearned

    b = digits_bundle()
    before = {k: v.clone() for k, v in b.net.state_dict().items()}
    m = make("sld", b, guidance_scale=300.0, steps=0)
    info = train(m)
    assert info["steps"] == 0 and m.cfg.steps == 0
    assert all(torch.equal(v, b.net.state_dict()[k]) for k, v in before.items())
    assert m.net.sampling_hook.to_dict() == {"method": "sld", "safety_prompts": [FORGET],
                                             "settings": {"warmup_steps": 10, "guidance_scale": 300.0,
                                                          "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4}}
    save_unlearned(b.net, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "sampling_hook.json").read_text()) == m.net.sampling_hook.to_dict()
    fresh = load_weights(CondUNet({"init_seed": 0}), tmp_path / "model")
    assert fresh.sampling_hook.to_dict() == m.net.sampling_hook.to_dict()
    from unlearnbench.external import Checkpoint, load_into

    outside = load_into(Checkpoint("state-dict", tmp_path / "model"), CondUNet({"init_seed": 0}))
    assert outside.sampling_hook.to_dict() == m.net.sampling_hook.to_dict(), "evaluate scores SLD's model as saved"


@pytest.mark.parametrize("name", ["spm", "advunlearn", "sld"])
def test_the_prompt_side_methods_refuse_gmm_concept_and_data_tasks(name):
    cls = METHODS.get(name)
    reason = cls.unsupported_reason(TASKS.get("gmm-concept"))
    assert reason and "gmm-concept" in reason and "null prompt" in reason
    assert cls.unsupported_reason(TASKS.get("digits-concept")) is None and cls.kinds == ("concept",)
    b = digits_bundle()
    b.kind = "data"
    with pytest.raises(ValueError, match=f"method {name} applies to concept tasks, not data"):
        make(name, b)


def test_advunlearn_refuses_the_paper_scale_tasks_without_a_text_encoder():
    reason = METHODS.get("advunlearn").unsupported_reason(TASKS.get("sd-concept"))
    assert reason and "sd-concept" in reason and "text encoder" in reason


@pytest.mark.parametrize("name", ["spm", "advunlearn", "sld"])
def test_digits_concept_has_grids_for_the_method(name):
    from unlearnbench.config import grid_values

    task = TASKS.get("digits-concept")()
    eps, smoke = grid_values(task, "eps", name), grid_values(task, "smoke", name)
    assert len(eps) == 6 and len(smoke) == 2 and set(smoke) <= set(eps)


def test_spm_and_sld_run_on_sd_concept_and_advunlearn_is_refused(tmp_path, capsys):
    """On sd-concept (the tiny random pipeline of tests/paper_fixtures.py) SPM's adapters sit on the real UNet's
    transformer blocks and its anchors perturb the 77-token text embedding; SLD's safety concept is the erased prompt's
    text embedding; both run end to end through the CLI. AdvUnlearn has no text encoder to train there."""
    from paper_fixtures import CLIP_OPTIONS, FAST, records, sd_dir, write_config

    from unlearnbench.cli.main import main

    sd = sd_dir(tmp_path / "sd")
    cfg = write_config(tmp_path / "sd.yaml", {"forget": "object", "eval_prompts": 1, **CLIP_OPTIONS, **FAST},
                       {"spm": [10.0], "sld": [1000.0]})
    out = tmp_path / "run"
    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "spm,sld", "--grid", "eps", "--config",
               str(cfg), "--set", "methods.spm.batch_size=1", "--set", "methods.spm.ddim_steps=3", "--steps", "2",
               "--executor", "serial", "--no-leaderboard", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    recs = {r["method"]: r for r in records(out)}
    assert all(r["status"] == "ok" for r in recs.values()), [r["error"] for r in recs.values()]
    assert recs["spm"]["train"]["steps"] == 2 and recs["spm"]["method_config"]["trainable"] == "lora-blocks"
    assert recs["sld"]["train"]["steps"] == 0 and recs["sld"]["sampling_hook"]["method"] == "sld"
    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "advunlearn", "--config", str(cfg),
               "--executor", "serial", "--dry-run", "--out", str(tmp_path / "adv")])
    assert rc != 0 and "no text encoder" in capsys.readouterr().err


def test_a_malformed_sampling_hook_file_is_refused(tmp_path):
    """sampling_hook.json may come from elsewhere (unlearnbench evaluate): it is read as small plain JSON and every
    value is checked before a sampler is built from it."""
    import json

    from torch import nn

    from unlearnbench.methods.sld import SETTINGS
    from unlearnbench.saving import SAMPLING_HOOK, load_sampling_hook

    good = {"method": "sld", "safety_prompts": [3], "settings": {k: 1.0 for k in SETTINGS}}
    for bad, msg in ((dict(good, settings={**good["settings"], SETTINGS[0]: "1e9; rm"}), "finite numbers"),
                     (dict(good, safety_prompts="3"), "safety_prompts"),
                     (dict(good, method="nope"), "no method with a sampling hook")):
        (tmp_path / SAMPLING_HOOK).write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            load_sampling_hook(nn.Linear(1, 1), tmp_path)
    (tmp_path / SAMPLING_HOOK).write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_sampling_hook(nn.Linear(1, 1), tmp_path)
    (tmp_path / SAMPLING_HOOK).write_text(json.dumps(good))
    assert load_sampling_hook(nn.Linear(1, 1), tmp_path).sampling_hook.safety_prompts == [3]
