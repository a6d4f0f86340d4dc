"""UCE, CA, FMN and MACE pinned to their authors' code: each method's real edit or ``losses()`` and backward pass runs
on recorded draws of a small random digits UNet (:class:`~unlearnbench.models.CondUNet`), and the edited weights or
the gradient must agree to 1e-5 with the reference formula transcribed here (repository and file cited), computed from
the task's own facts (which prompt is erased, which is the anchor or guide), not from the method's choices."""
from __future__ import annotations

import copy

import pytest
import torch

from unlearnbench.diffusion import Schedule, add_noise
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import make_config
from unlearnbench.models import CondUNet
from unlearnbench.runner import train
from unlearnbench.tasks import TASKS
from unlearnbench.tasks.base import ModelBundle

FORGET = 4  # "digit 3"


def digits_bundle(forget=(FORGET,), seed=0) -> ModelBundle:
    """A digits-shaped concept bundle: a random CondUNet (its prompt table random too), a frozen copy as the
    pretrained model, and a recording sampler standing in for the pool (``bundle.extras["sampled"]``: (cond, x0))."""
    torch.manual_seed(seed)
    net = CondUNet({"init_seed": seed})
    with torch.no_grad():  # move the network off its initialisation so that no term is trivially zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(net).requires_grad_(False).eval()
    sampled: list = []

    def sampler(cond, gen):
        x0 = torch.randn((cond.shape[0], 1, 8, 8), generator=gen).clamp(-1, 1)
        sampled.append((cond.clone(), x0))
        return x0

    return ModelBundle(net=net, ref=ref, schedule=Schedule.linear(1000), kind="concept", data_shape=(1, 8, 8),
                       null_cond=0, forget_concepts=list(forget),
                       retain_concepts=[p for p in range(1, 11) if p not in forget], ref_sampler=sampler,
                       sample_steps=5, guidance=3.0, extras={"sampled": sampled})


def make(name, bundle, seed=0, **kw):
    cls = METHODS.get(name)
    return cls(make_config(cls.Config, kw, name), bundle, torch.Generator().manual_seed(seed))


def record_noised(m) -> list:
    """Wrap ``m.noised`` so that every (x0, x_t, t, noise) it draws is kept, in order."""
    draws: list = []
    real = m.noised

    def noised(x0):
        x_t, t, noise = real(x0)
        draws.append((x0, x_t, t, noise))
        return x_t, t, noise

    m.noised = noised
    return draws


def grads(loss, params) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]


def method_grads(m) -> list[torch.Tensor]:
    """The gradient the runner's step would apply: the method's real ``losses()`` then ``backward``."""
    params = list(m.trainable_parameters())
    for p in params:
        p.grad = None
    m.backward(m.losses())
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def assert_close(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())
    assert any(float(b.abs().max()) > 1e-6 for b in ref), "the reference gradient is zero: the test would pin nothing"


# -- UCE: rohitgandikota/unified-concept-editing -----------------------------------------------------------------------
def uce_reference(orig: CondUNet, erase_ids, guide_id, preserve_ids, erase_scale, preserve_scale, lamb):
    """trainscripts/uce_sd_erase.py ``UCE`` transcribed: per attn2 to_k / to_v module, ``mat1 = lamb * w_old``,
    ``mat2 = lamb * I``; per erased concept ``mat1 += erase_scale * v_i_star @ c_i.T``, ``mat2 += erase_scale * c_i @
    c_i.T`` with ``v_i_star = module(guide embedding).T`` under the original weights; the same with preserve_scale for
    each preserved concept (``v_i_star`` its own original output); ``weight = mat1 @ torch.inverse(mat2)``. A digits
    prompt's concept embedding is each of its tokens (column vectors), paired with the guide's token at that position."""
    emb = lambda i: orig.encode_prompt(torch.tensor([i]))[0].double()  # noqa: E731 - [L, d]
    out = {}
    for name, mod in orig.unet.named_modules():
        if "attn2" in name and (name.endswith("to_v") or name.endswith("to_k")):
            w_old = mod.weight.double()
            mat1 = lamb * w_old
            mat2 = lamb * torch.eye(w_old.shape[1], dtype=torch.float64)
            for e in erase_ids:
                for c_tok, g_tok in zip(emb(e), emb(guide_id)):
                    c_i = c_tok[:, None]
                    v_i_star = (w_old @ g_tok)[:, None]
                    mat1 += erase_scale * (v_i_star @ c_i.T)
                    mat2 += erase_scale * (c_i @ c_i.T)
            for p in preserve_ids:
                for c_tok in emb(p):
                    c_i = c_tok[:, None]
                    v_i_star = (w_old @ c_tok)[:, None]
                    mat1 += preserve_scale * (v_i_star @ c_i.T)
                    mat2 += preserve_scale * (c_i @ c_i.T)
            out[name] = mat1 @ torch.inverse(mat2)
    return out


@pytest.mark.parametrize("forget,preserve,scales", [((FORGET,), "kept+null", (1.0, 1.0, 0.5)),
                                                    ((1, 10), "kept+null", (3.0, 0.5, 0.5)),
                                                    ((FORGET,), "kept", (1.0, 1.0, 0.5)),
                                                    ((FORGET,), "none", (1.0, 1.0, 0.5))])
def test_uce_edit_matches_uce_sd_erase(forget, preserve, scales):
    b = digits_bundle(forget)
    orig = copy.deepcopy(b.net)
    s_e, s_p, lamb = scales
    m = make("uce", b, erase_scale=s_e, preserve_scale=s_p, lamb=lamb, preserve=preserve)
    info = train(m)
    assert info["steps"] == 0 and info["diverged"] is None
    kept = [p for p in range(1, 11) if p not in forget] if preserve != "none" else []
    kept += [0] if preserve == "kept+null" else []
    ref = uce_reference(orig, forget, 0, kept, s_e, s_p, lamb)
    assert len(ref) == len(list(m.trainable_parameters())) > 0
    edited = dict(b.net.unet.named_modules())
    for name, w in ref.items():
        assert torch.allclose(edited[name].weight.double(), w, atol=1e-5, rtol=1e-5), name
        assert not torch.allclose(w, orig.unet.get_submodule(name).weight.double(), atol=1e-4)
    # nothing but the keys and values moved
    for (n, p), (_, q) in zip(b.net.named_parameters(), orig.named_parameters()):
        if not any(n.endswith(f"{k}.weight") for k in ref):
            assert torch.equal(p, q), n


def test_uce_refuses_steps_and_the_null_scored_task():
    b = digits_bundle()
    with pytest.raises(ValueError, match="closed-form"):
        make("uce", b, steps=10)
    assert "null prompt" in METHODS.get("uce").unsupported_reason(TASKS.get("gmm-concept"))


# -- CA: nupurkmr9/concept-ablation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["model-based", "noise-based"])
@pytest.mark.parametrize("prior", [0.0, 0.7])
def test_ca_gradient_matches_train_py(loss_type, prior):
    """diffusers/train.py: ``model_pred = unet(noisy_latents, t, encoder_hidden_states)`` (the target caption, here the
    erased prompt) on anchor images; ``model_pred_anchor = unet(noisy_latents, t, encoder_anchor_hidden_states)`` under
    no_grad from the model being trained; ``target = model_pred_anchor`` (model-based) or ``noise`` (noise-based);
    ``loss = (F.mse_loss(model_pred, target, reduction="none") * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])``, mean;
    prior: ``+ prior_loss_weight * F.mse_loss(model_pred_prior, noise_prior)`` on anchor images with the anchor
    caption. The anchor is the null prompt and the mask all ones."""
    b = digits_bundle()
    m = make("ca", b, batch_size=6, loss_type=loss_type, prior_loss_weight=prior)
    draws = record_noised(m)
    ours = method_grads(m)
    # every image the method trained on is an anchor (null-prompt) sample
    assert all(bool((cond == 0).all()) for cond, _ in b.extras["sampled"])
    assert len(draws) == (2 if prior else 1)
    net, params = b.net, list(m.trainable_parameters())
    assert params and all(("attn2.to_k" in n or "attn2.to_v" in n) == p.requires_grad for n, p in net.named_parameters())
    F = torch.nn.functional
    x0, x_t, t, noise = draws[0]
    assert torch.allclose(x_t, add_noise(b.schedule, x0, noise, t))
    B = x_t.shape[0]
    target_ids, anchor_ids = torch.full((B,), FORGET), torch.zeros(B, dtype=torch.long)
    model_pred = net(x_t, t, target_ids)
    with torch.no_grad():
        model_pred_anchor = net(x_t, t, anchor_ids)
    target = model_pred_anchor if loss_type == "model-based" else noise
    mask = torch.ones_like(x_t)
    loss = ((F.mse_loss(model_pred.float(), target.float(), reduction="none") * mask).sum([1, 2, 3])
            / mask.sum([1, 2, 3])).mean()
    if prior:
        _, x_p, t_p, noise_p = draws[1]
        loss = loss + prior * F.mse_loss(net(x_p, t_p, anchor_ids), noise_p, reduction="mean")
    assert_close(ours, grads(loss, params))


# -- FMN: SHI-Labs/Forget-Me-Not ---------------------------------------------------------------------------------------
def fmn_reference_loss(net: CondUNet, x_t, t, cond, positions):
    """src/train_attn.py transcribed: every module ending in ``attn2`` computes ``query = attn.to_q(hidden_states)``,
    ``key = attn.to_k(encoder_hidden_states)``, heads to batch, ``attention_probs = softmax(query key^T * scale)``
    (``get_attention_scores``); ``AttnController`` keeps ``attn_prob.masked_select(concept_positions[:, None, :]
    .repeat(head_num, 1, 1)).reshape(-1, n_concept)`` and the loss is ``torch.cat(self.attn_probs).norm()``. The
    probabilities here are formed from each layer's inputs, caught by forward pre-hooks on the unmodified network."""
    kept, handles = [], []

    def hook(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        enc = kwargs.get("encoder_hidden_states")
        q, k = mod.to_q(h), mod.to_k(enc)
        bsz, heads = q.shape[0], mod.heads
        q = q.view(bsz, q.shape[1], heads, -1).permute(0, 2, 1, 3).reshape(bsz * heads, q.shape[1], -1)
        k = k.view(bsz, k.shape[1], heads, -1).permute(0, 2, 1, 3).reshape(bsz * heads, k.shape[1], -1)
        probs = torch.softmax(q @ k.transpose(1, 2) * mod.scale, dim=-1)
        concept_positions = positions[None].repeat(bsz, 1)  # [bs, L], the same prompt layout for every sample
        kept.append(probs.masked_select(concept_positions[:, None, :].repeat(heads, 1, 1))
                    .reshape(-1, int(concept_positions[0].sum())))

    for name, mod in net.unet.named_modules():
        if name.endswith("attn2"):
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        net(x_t, t, cond)
    finally:
        for h in handles:
            h.remove()
    assert kept, "no attn2 layer ran"
    return torch.cat(kept).norm()


@pytest.mark.parametrize("forget", [(FORGET,), (1, 10)])
def test_fmn_gradient_matches_train_attn(forget):
    b = digits_bundle(forget)
    m = make("fmn", b, batch_size=5)
    draws = record_noised(m)
    ours = method_grads(m)
    (x0, x_t, t, _), = draws
    (cond, x0_s), = b.extras["sampled"]
    assert torch.equal(x0, x0_s) and set(cond.tolist()) <= set(forget)  # concept images of the erased prompts
    positions = torch.ones(b.net.n_tokens, dtype=torch.bool)
    params = list(m.trainable_parameters())
    ref = fmn_reference_loss(b.net, x_t, t, cond, positions)
    assert_close(ours, grads(ref, params))
    # the recording processor leaves the network's output as it was
    from unlearnbench.methods._xattn import recorded_attention, xattn_modules

    with torch.no_grad():
        plain = b.net(x_t, t, cond)
        with recorded_attention(b.net) as rec:
            recorded = b.net(x_t, t, cond)
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert len(rec.probs) == len(xattn_modules(b.net)) >= 2


@pytest.mark.parametrize("name", ["uce", "ca", "fmn", "mace"])
def test_prompt_side_methods_refuse_gmm_concept(name):
    reason = METHODS.get(name).unsupported_reason(TASKS.get("gmm-concept"))
    assert reason and "gmm-concept" in reason and "null prompt" in reason
    assert METHODS.get(name).unsupported_reason(TASKS.get("digits-concept")) is None


# -- MACE: Lu et al., CVPR 2024 (re-implemented from the paper) ---------------------------------------------------------
def ridge_reference(w, lamb, terms):
    """``(lamb W + sum_k s_k sum_rows y x^T) (lamb I + sum_k s_k sum_rows x x^T)^-1`` with one outer product per row
    (the normal equations of the paper's refinement and fusion objectives), in float64 with ``torch.inverse``."""
    w = w.double()
    mat1, mat2 = lamb * w, lamb * torch.eye(w.shape[1], dtype=torch.float64)
    for xs, ys, s in terms:
        for x, y in zip(xs.double(), ys.double()):
            mat1 += s * y[:, None] @ x[None, :]
            mat2 += s * x[:, None] @ x[None, :]
    return mat1 @ torch.inverse(mat2)


def kv_names(net):
    return [n for n, _ in net.named_modules() if "attn2" in n and (n.endswith("to_k") or n.endswith("to_v"))]


@pytest.mark.parametrize("forget", [(FORGET,), (1, 10)])
def test_mace_refinement_matches_the_paper(forget):
    """Stage 1 (paper section 3.2): ``min_W' sum_i ||W' e_i - W m_i||^2 + s_p sum_j ||W' p_j - W p_j||^2 + lamb ||W' -
    W||^2`` per key / value projection, e_i the erased prompts' tokens, m_i the mapping (null) prompt's tokens at the
    same position, p_j the kept and null prompts' tokens."""
    b = digits_bundle(forget)
    orig = copy.deepcopy(b.net)
    m = make("mace", b, lamb=0.3, preserve_scale=0.5)
    m.setup()
    emb = lambda ids: orig.encode_prompt(torch.tensor(ids)).reshape(-1, 32)  # noqa: E731
    e, g, p = emb(list(forget)), emb([0] * len(forget)), emb([k for k in range(1, 11) if k not in forget] + [0])
    mods = dict(b.net.named_modules())
    for n in kv_names(orig):
        w = orig.get_submodule(n).weight.detach()
        ref = ridge_reference(w, 0.3, [(e, g @ w.T, 1.0), (p, p @ w.T, 0.5)])
        assert torch.allclose(mods[n].weight.double(), ref, atol=1e-5, rtol=1e-5), n
        assert not torch.allclose(ref, w.double(), atol=1e-4)


def mace_reference_loss(net, adapted, x0, x_t, t, cond, threshold):
    """Stage 2 (paper section 3.3): ``sum_l sum_heads ||A_l[:, :, concept tokens] * M||_F^2`` per sample, mean over
    the batch, with the attention probabilities ``softmax(q k^T * scale)`` formed from each attn2 layer's inputs and
    the adapted key weight ``W + B A`` (``adapted``: name -> weight); M the digit's ink (x0 > threshold) with a 2x2
    cell counted as ink if any of its pixels is."""
    ink = (x0 > threshold).float().view(x0.shape[0], 1, 4, 2, 4, 2).amax((3, 5)).reshape(x0.shape[0], 16)
    total, handles = [], []
    names = {id(mod): n for n, mod in net.named_modules()}

    def hook(mod, args, kwargs):
        h, enc = (args[0] if args else kwargs["hidden_states"]), kwargs["encoder_hidden_states"]
        q = mod.to_q(h)
        k = enc @ adapted[names[id(mod)] + ".to_k.weight"].T
        bsz, heads = q.shape[0], mod.heads
        q = q.view(bsz, q.shape[1], heads, -1).transpose(1, 2)
        k = k.view(bsz, k.shape[1], heads, -1).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * mod.scale, -1)  # [B, heads, 16, L]
        total.append((probs * ink[:, None, :, None]).pow(2).sum((1, 2, 3)))

    for n, mod in net.named_modules():
        if n.endswith("attn2"):
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        torch.func.functional_call(net, adapted, (x_t, t, cond), strict=False)
    finally:
        for hd in handles:
            hd.remove()
    return torch.stack(total).sum(0).mean()


def test_mace_lora_gradient_matches_the_paper():
    b = digits_bundle()
    m = make("mace", b, batch_size=5, ink_threshold=0.2)
    m.setup()
    with torch.no_grad():  # adapters away from their zero start, so that both factors get a gradient
        for a, bb in m.lora[0]:
            bb.normal_(0, 0.1)
    draws = record_noised(m)
    ours = method_grads(m)
    (x0, x_t, t, _), = draws
    (cond, _), = b.extras["sampled"]
    assert bool((cond == FORGET).all())
    params = list(m.trainable_parameters())
    names = [n for n in kv_names(b.net)]
    adapted = {f"{n}.weight": b.net.get_submodule(n).weight + bb @ a for n, (a, bb) in zip(names, m.lora[0])}
    ref = mace_reference_loss(b.net, adapted, x0, x_t, t, cond, 0.2)
    assert_close(ours, grads(ref, params))


def test_mace_fusion_matches_the_paper():
    """Stage 3 (paper section 3.4): ``min_W* sum_i sum_{e in E_i} ||W* e - (W + B_i A_i) e||^2 + s_p sum_j ||W* p_j -
    W p_j||^2 + lamb ||W* - W||^2``, E_i the tokens of erased prompt i."""
    forget = (1, 10)
    b = digits_bundle(forget)
    m = make("mace", b, lamb=0.7, preserve_scale=0.2, refine=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pairs in m.lora:
            for a, bb in pairs:
                a.copy_(torch.randn(a.shape, generator=g))
                bb.copy_(torch.randn(bb.shape, generator=g))
    before = copy.deepcopy(b.net)
    m.finish()
    emb = lambda ids: before.encode_prompt(torch.tensor(ids)).reshape(-1, 32).detach()  # noqa: E731
    p = emb([k for k in range(1, 11) if k not in forget] + [0])
    for j, n in enumerate(kv_names(before)):
        w = before.get_submodule(n).weight.detach()
        terms = [(emb([c]), emb([c]) @ (w + m.lora[i][j][1] @ m.lora[i][j][0]).T.detach(), 1.0)
                 for i, c in enumerate(forget)]
        ref = ridge_reference(w, 0.7, terms + [(p, p @ w.T, 0.2)])
        assert torch.allclose(b.net.get_submodule(n).weight.double(), ref, atol=1e-5, rtol=1e-5), n


def test_mace_refuses_sd_and_gmm():
    assert "mask" in METHODS.get("mace").unsupported_reason(TASKS.get("sd-concept"))
    assert "null prompt" in METHODS.get("mace").unsupported_reason(TASKS.get("gmm-concept"))


# -- sd-concept: the tiny random pipeline (tests/paper_fixtures.py) ------------------------------------------------------
@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from paper_fixtures import sd_dir

    return sd_dir(tmp_path_factory.mktemp("sd"))


def test_uce_and_ca_on_sd_concept(sd, tmp_path, capsys):
    """On sd-concept UCE edits every attn2 key / value over all 77 tokens of each prompt's text embedding (the
    reference's formula on EpsNet's table) and CA trains the keys and values; both run end to end through the CLI."""
    from paper_fixtures import CLIP_OPTIONS, FAST, records, write_config
    from unlearnbench.tasks.stable_diffusion import SDConceptTask

    task = SDConceptTask({"model": str(sd), "forget": "object", **CLIP_OPTIONS, **FAST, "eval_prompts": 1},
                         cache_dir=str(tmp_path / "c0"))
    b = task.build(0)
    orig = copy.deepcopy(b.net)
    m = make("uce", b, erase_scale=2.0)
    m.setup()
    table = orig.embeds.double()
    kept = list(b.retain_concepts) + [0]
    for name, mod in orig.unet.named_modules():
        if "attn2" in name and (name.endswith("to_k") or name.endswith("to_v")):
            w = mod.weight.double()
            mat1, mat2 = 0.5 * w, 0.5 * torch.eye(w.shape[1], dtype=torch.float64)
            for e in b.forget_concepts:
                c, g = table[e].T, table[0].T  # [d, 77]: one column per token
                mat1 += 2.0 * (w @ g) @ c.T
                mat2 += 2.0 * c @ c.T
            for p in kept:
                c = table[p].T
                mat1 += (w @ c) @ c.T
                mat2 += c @ c.T
            ref = mat1 @ torch.inverse(mat2)
            assert torch.allclose(b.net.unet.get_submodule(name).weight.double(), ref, atol=1e-5, rtol=1e-4), name
    cfg = write_config(tmp_path / "sd.yaml", {"forget": "object", "eval_prompts": 1, **CLIP_OPTIONS, **FAST},
                       {"uce": [1.0], "ca": [2]})
    out = tmp_path / "run"
    from unlearnbench.cli.main import main

    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "uce,ca", "--grid", "eps", "--config",
               str(cfg), "--set", "methods.ca.batch_size=2", "--executor", "serial", "--no-leaderboard",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    recs = {r["method"]: r for r in records(out)}
    assert all(r["status"] == "ok" for r in recs.values()), [r["error"] for r in recs.values()]
    assert recs["uce"]["train"]["steps"] == 0 and recs["ca"]["train"]["steps"] == 2
    assert recs["ca"]["method_config"]["trainable"] == "xattn-kv"


def test_concept_token_mask_marks_every_word_and_the_end_of_text_of_the_erased_prompts_only():
    """A multi-token concept ("Van Gogh") gets all its word tokens and its end-of-text token; the null prompt and the
    kept prompts get none; padding never counts."""
    from types import SimpleNamespace

    from unlearnbench.tasks.stable_diffusion import concept_token_mask

    words = {"": [], "Van Gogh": [7, 8, 9], "a cat": [4, 5]}

    def tokenizer(prompts, padding, max_length, truncation, return_tensors):
        ids = [[49406] + words[p] + [49407] + [0] * (max_length - len(words[p]) - 2) for p in prompts]
        att = [[1] * (len(words[p]) + 2) + [0] * (max_length - len(words[p]) - 2) for p in prompts]
        return SimpleNamespace(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att))

    tokenizer.model_max_length = 8
    mask = concept_token_mask(tokenizer, ["", "Van Gogh", "a cat"], [1])
    assert mask.tolist() == [[False] * 8, [False, True, True, True, True, False, False, False], [False] * 8]


def test_fmn_on_sd_concept_steers_the_tokenizers_concept_positions(sd, tmp_path, capsys):
    """On sd-concept FMN's positions come from the tokenizer: the erased prompt's word tokens and its end-of-text token
    (use_pooler), in the text embedding the UNet reads; its gradient on the real UNet is train_attn.py's, and it runs
    end to end through the CLI. MACE is still refused (no segmentation masks)."""
    from paper_fixtures import CLIP_OPTIONS, FAST, records, write_config
    from unlearnbench.cli.main import main
    from unlearnbench.tasks.stable_diffusion import SDConceptTask

    task = SDConceptTask({"model": str(sd), "forget": "object", **CLIP_OPTIONS, **FAST, "eval_prompts": 1},
                         cache_dir=str(tmp_path / "c0"))
    b = task.build(0)
    (erased,) = b.forget_concepts
    tok = task._setup(torch.device("cpu"))["w"]["parts"]["tokenizer"]
    ids = tok(b.extras["prompts"][erased]).input_ids  # [bos, the words..., eos]
    positions = b.extras["concept_tokens"][erased]
    assert positions.dtype == torch.bool and positions.shape == (tok.model_max_length,)
    assert positions.nonzero().flatten().tolist() == list(range(1, len(ids)))  # the words and end-of-text, not bos
    assert not b.extras["concept_tokens"][[0] + list(b.retain_concepts)].any()
    m = make("fmn", b, batch_size=2)
    draws = record_noised(m)
    ours = method_grads(m)
    (_, x_t, t, _), = draws
    cond = torch.full((2,), erased)
    params = list(m.trainable_parameters())
    assert_close(ours, grads(fmn_reference_loss(b.net, x_t, t, cond, positions), params))
    cfg = write_config(tmp_path / "sd.yaml", {"forget": "object", "eval_prompts": 1, **CLIP_OPTIONS, **FAST},
                       {"fmn": [2], "mace": [1]})
    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "fmn", "--grid", "eps", "--config",
               str(cfg), "--set", "methods.fmn.batch_size=2", "--executor", "serial", "--no-leaderboard",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr()
    (rec,) = records(tmp_path / "run")
    assert rec["status"] == "ok" and rec["train"]["steps"] == 2, rec.get("error")
    rc = main(["run", "--task", "sd-concept", "--model", str(sd), "--methods", "mace", "--config", str(cfg),
               "--executor", "serial", "--dry-run", "--out", str(tmp_path / "mace")])
    err = capsys.readouterr().err
    assert rc == 2 and "mace" in err and "sd-concept" in err, err


def test_steps_flag_passes_over_the_closed_form_method(tmp_path):
    """``--steps N`` sets the optimizer steps of every trained method; UCE, a closed-form edit, takes none and is
    planned without it (a sweep of several methods with --steps still runs)."""
    from unlearnbench.config import plan_trials

    plan = plan_trials("digits-concept", "uce,ca", "smoke", "0", run_dir=str(tmp_path / "r"), steps=7)
    cfg = {t["method"]: t["method_config"] for t in plan.trials}
    assert "steps" not in cfg["uce"] and cfg["ca"]["steps"] == 7
