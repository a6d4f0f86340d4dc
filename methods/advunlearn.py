"""AdvUnlearn: ESD with an inner soft-prompt attack, on the prompt's encoder (Zhang et al., NeurIPS 2024)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearnbench.diffusion import ddim_sample, guided
from unlearnbench.methods import METHODS
from unlearnbench.methods._xattn import PromptSideMethod, eps_with_tokens, prompt_tokens
from unlearnbench.methods.esd import ESD, ESDConfig, esd_target


@dataclass
class AdvUnlearnConfig(ESDConfig):
    trainable: str = field(default="prompt", metadata={
        "help": "parameter set (AdvUnlearn: the text encoder; here prompt = the prompt-embedding table and the "
                "cross-attention K/V that read it)"})
    xt_source: str = field(default="base", metadata={
        "help": "model that samples x_t (AdvUnlearn: its UNet, frozen when the text encoder trains, with the "
                "original prompt embedding: base)", "choices": ("current", "base")})
    retain_weight: float = field(default=1.0, metadata={"help": "retain_loss_w"})
    retain_batch: int = field(default=5, metadata={"help": "retain prompts per step (retain_batch)"})
    warmup: int = field(default=200, metadata={"help": "steps of plain ESD before the first attack (warmup_iter)",
                                                        "positive": False})
    attack_steps: int = field(default=30, metadata={"help": "inner attack steps (attack_step)", "positive": False})
    attack_lr: float = field(default=1e-3, metadata={"help": "inner attack Adam rate (attack_lr)"})
    attack_every: int = field(default=1, metadata={"help": "steps between attacks (adv_prompt_update_step)"})
    attack_batch: int = field(default=1, metadata={"help": "x_t per attack step (the reference draws one)"})
    adv_tokens: int = field(default=1, metadata={"help": "adversarial prefix tokens (adv_prompt_num)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("retain_batch", "attack_every", "attack_batch", "adv_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"advunlearn {name}={getattr(self, name)} is out of range; valid: an integer >= 1")
        for name in ("retain_weight", "warmup", "attack_steps", "attack_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"advunlearn {name}={getattr(self, name)} is out of range; valid: a number >= 0")


@METHODS.register("advunlearn")
class AdvUnlearn(PromptSideMethod, ESD):
    """AdvUnlearn with ``retain_train='reg'``: per step, one erased concept c, a DDIM stop step k, x_t of c sampled by
    the frozen model (guidance ``start_guidance`` 3) and x_r of ``retain_batch`` kept prompts r at the same k; the loss
    is ``MSE(eps_theta(x_t, [adv; c]), e_0 - eta (e_c - e_0)) + retain_weight * MSE(eps_theta(x_r, r), eps_orig(x_r,
    r))``. Every ``attack_every`` steps c is redrawn and, from step ``warmup`` on, the adversarial prefix ``adv``
    ([adv_tokens, D] tokens) is refreshed by ``attack_steps`` Adam steps (rate ``attack_lr``) on ``MSE(eps_theta(x, [adv; c]),
    eps_orig(x, c))`` (fresh x per step): the soft prompt that regenerates the concept from the model being trained;
    before the first attack the ESD term reads c alone.

    Follows OPTML-Group/AdvUnlearn: ``train-scripts/AdvUnlearn.py`` (the loop: ``i >= warmup_iter`` attacks every
    ``adv_prompt_update_step``, ``attack_init='latest'`` warm-starts each attack from the last one, the first from a
    random vocabulary token; defaults start_guidance 3, negative_guidance 1, warmup 200, attack_step 30, attack_lr
    1e-3, adv_prompt_num 1, retain_batch 5, retain_loss_w 1, train_method text_encoder_full),
    ``train-scripts/utils/get_loss.py`` (``get_train_loss_retain``: ``criteria(e_n, e_0 - negative_guidance * (e_p -
    e_0))`` with e_0 / e_p from ``model_orig``, plus ``retain_loss_w * criteria(retain_e_n, retain_e_p)`` under
    ``retain_train == 'reg'``) and ``train-scripts/utils/attack_util.py`` (``soft_prompt_attack``: ``loss =
    criteria(e_n, e_p)`` on the adversarial condition, ``attack_type='prefix_k'``).
    Deviations: the digits network has no text encoder: its prompt-embedding table gives the prompt's cross-attention
    tokens directly, so AdvUnlearn trains that table and the cross-attention K/V projections that read it
    (``trainable=prompt``), and the adversarial prefix lives in that token space (the reference's
    ``attack_embd_type='condition_embd'``; its default ``word_embd`` passes the adversarial word through the trained
    encoder), prepended to the concept's tokens (the sequence grows by ``adv_tokens``; CLIP's fixed 77 positions drop
    padding instead); the first attack starts from a random token of the prompt table; ``retain_train='reg'`` (one
    step on the summed loss) where the script's default ``'iter'`` takes a separate optimizer step on the retain loss;
    the retain prompts are the task's kept prompts (the reference: COCO object prompts); timesteps as ESD here (the
    DDIM step reached). Per-task defaults may shorten the attack (the digits task: 10 attack steps every 5 steps after
    a 30-step warm-up, 4 samples per attack step, to fit its trial budget).
    A task whose scored distribution is the null prompt (gmm-concept) is refused, and a network without a prompt
    table (the paper-scale tasks' precomputed text embeddings have no encoder to train).
    Sweep: ``--grid eps`` sets ``retain_weight`` (weak -> strong is decreasing weight).
    """

    name = "advunlearn"
    kinds = ("concept",)
    Config = AdvUnlearnConfig
    grid_params = {"eps": "retain_weight"}
    default_grids = {"concept": {"eps": [8.0, 4.0, 2.0, 1.0, 0.5, 0.25], "smoke": [4.0, 0.5]}}

    needs_learned_prompts = "trains the prompt's encoder (no text encoder is loaded to train)"

    def __init__(self, cfg, bundle, generator):
        if getattr(bundle.net, "prompt_embedding", None) is None:
            raise ValueError("advunlearn trains the prompt's encoder (here: a prompt-embedding table), which this "
                             "task's network lacks")
        if not bundle.retain_concepts:
            raise ValueError("advunlearn needs kept prompts (its retain loss)")
        super().__init__(cfg, bundle, generator)
        self.adv: Tensor | None = None  # [adv_tokens, D], the latest attack's prefix
        self.word: int | None = None  # the erased prompt of the current attack round

    def draw_k(self) -> int:
        return int(torch.randint(0, self.cfg.ddim_steps, (1,), generator=self.gen))

    @torch.no_grad()
    def sample_at(self, prompts: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """x_t of the x_t source model for per-row ``prompts`` after ``k`` guided DDIM steps: (x_t, t)."""
        b, cfg = self.bundle, self.cfg
        model = self.net if cfg.xt_source == "current" else b.ref
        x = ddim_sample(b.schedule, guided(model, b.null_cond, cfg.start_guidance), prompts, b.data_shape,
                        cfg.ddim_steps, generator=self.gen, device=self.device, stop_at=cfg.ddim_steps - k)
        ts = torch.linspace(b.schedule.T - 1, 0, cfg.ddim_steps).round().long()
        return x, ts[k].expand(prompts.shape[0]).to(self.device)

    def with_prefix(self, adv: Tensor, c: int, n: int) -> Tensor:
        """[n, adv_tokens + L, D]: the adversarial prefix, then the current network's tokens of prompt ``c``."""
        tokens = prompt_tokens(self.net, [c] * n)
        return torch.cat([adv.unsqueeze(0).expand(n, -1, -1), tokens], dim=1)

    def attack(self, c: int) -> Tensor:
        """soft_prompt_attack: refresh ``self.adv`` against the current network; returns it (detached)."""
        cfg, b = self.cfg, self.bundle
        if self.adv is None:  # attack_init: a random token of the (current) prompt table
            table = prompt_tokens(self.net, list(range(self.net.prompt_embedding.num_embeddings)))
            p = int(torch.randint(0, table.shape[0], (1,), generator=self.gen))
            j = torch.randint(0, table.shape[1], (cfg.adv_tokens,), generator=self.gen)
            self.adv = table[p, j].detach().clone()
        adv = self.adv.clone().requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=cfg.attack_lr)
        n = cfg.attack_batch
        for _ in range(cfg.attack_steps):
            x, t = self.sample_at(self.cond(c, n), self.draw_k())
            with torch.no_grad():
                e_p = b.ref(x, t, self.cond(c, n))
                tokens_c = prompt_tokens(self.net, [c] * n)
            tokens = torch.cat([adv.unsqueeze(0).expand(n, -1, -1), tokens_c], dim=1)
            loss = (eps_with_tokens(self.net, x, t, tokens) - e_p).pow(2).mean()
            (grad,) = torch.autograd.grad(loss, [adv])
            adv.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.adv = adv.detach()
        return self.adv

    def losses(self) -> dict[str, Tensor]:
        cfg, b, B = self.cfg, self.bundle, self.cfg.batch_size
        attacked = self.step >= cfg.warmup
        if self.word is None or self.step % cfg.attack_every == 0:  # the concept changes with the prefix
            forget = list(b.forget_concepts)
            self.word = forget[int(torch.randint(0, len(forget), (1,), generator=self.gen))]
            if attacked:
                self.attack(self.word)
        elif attacked and self.adv is None:
            self.attack(self.word)
        c = self.word
        k = self.draw_k()
        x_t, t = self.sample_at(self.cond(c, B), k)
        r = self.pick(list(b.retain_concepts), cfg.retain_batch)
        x_r, t_r = self.sample_at(r, k)
        null = self.cond(b.null_cond, B)
        target = esd_target(b.ref, x_t, t, self.cond(c, B), null, cfg.eta)
        if attacked:
            e_n = eps_with_tokens(self.net, x_t, t, self.with_prefix(self.adv, c, B))
        else:
            e_n = self.net(x_t, t, self.cond(c, B))
        unlearn = (e_n - target).pow(2).flatten(1).mean(1)
        with torch.no_grad():
            retain_target = b.ref(x_r, t_r, r)
        retain = (self.net(x_r, t_r, r) - retain_target).pow(2).flatten(1).mean(1)
        return {"loss": unlearn, "unlearn": unlearn, "retain": retain}

    def objective(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["unlearn"].mean() + self.cfg.retain_weight * losses["retain"].mean()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "adv": None if self.adv is None else self.adv.cpu(), "word": self.word}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.adv = None if state.get("adv") is None else state["adv"].to(self.device)
        self.word = state.get("word")
