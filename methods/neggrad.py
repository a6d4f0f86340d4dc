"""NegGrad and naive deletion, the two simple data-unlearning baselines of the SISS paper (Alberti et al., ICLR 2025)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from unlearnbench.diffusion import per_sample_sse
from unlearnbench.methods import METHODS
from unlearnbench.methods.base import MethodConfig
from unlearnbench.methods._data import DataBatches

# the strength of both is how long they run: under the runner's clipping (to 1) and Adam a loss weight barely moves
# an update, so --grid eps sweeps the number of steps (weak -> strong). Ascent runs away within tens of steps (gmm-data
# at lr 5e-5: 10 steps ok, 50 diverged with a KL to the pretrained model of 2e4 nats; at lr 1e-3 even 2 steps diverge)
NEGGRAD_GRID = {"data": {"eps": [2.0, 4.0, 8.0, 15.0, 30.0, 60.0], "smoke": [4.0, 30.0]}}
NAIVE_GRID = {"data": {"eps": [10.0, 25.0, 50.0, 100.0, 200.0, 400.0], "smoke": [25.0, 200.0]}}


@dataclass
class NegGradConfig(MethodConfig):
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate (the reference's 5e-5, "
                                                      "config/delete_tshirt.yaml)"})
    superfactor: float = field(default=1.0, metadata={"help": "weight of the ascent term (the reference's "
                                                              "loss_params.superfactor)"})


@METHODS.register("neggrad")
class NegGrad(DataBatches):
    """NegGrad: gradient *ascent* on the denoising loss of the forget images alone, ``L = -superfactor mean_b
    ||eps_theta(sqrt(abar) a + sigma eps, t) - eps||^2`` (summed over pixels), nothing to hold the rest in place.

    Follows claserken/SISS: ``losses/ddpm_deletion_loss.py`` ``simple_neg_del`` (``loss_a = (deletion_noise_preds -
    noise) ** 2``, ``loss = - superfactor * loss_a``) and ``delete_celeb.py`` / ``delete_tshirt.py`` (``loss.sum() /
    train_batch_size``, ``clip_grad_norm_(..., 1.0)``, uniform t as in ``delete_tshirt.py``).
    Defaults: lr 5e-5 (``config/delete_tshirt.yaml``) on every task: ascent at the other data methods' rates diverges
    within a few steps.
    Deviations: plain Adam from the runner (the reference: AdamW, betas 0.95/0.999, weight decay 1e-6); forget rows
    drawn with replacement per step (the reference repeats its deletion set); the noise is drawn for the forget batch
    alone (the reference draws it for the paired kept batch it does not use here).
    Sweep: ``--grid eps`` sets ``steps`` (under clipping and Adam the weight barely changes an update).
    """

    name = "neggrad"
    kinds = ("data",)
    Config = NegGradConfig
    grid_params = {"eps": "steps"}
    default_grids = NEGGRAD_GRID

    def losses(self) -> dict[str, Tensor]:
        a, cond, _ = self.rows("forget", self.cfg.batch_size)
        x_t, t, noise = self.noised(a)
        neg = per_sample_sse(self.net(x_t, t, cond), noise)
        return {"loss": -self.cfg.superfactor * neg, "forget": neg}


@METHODS.register("naive")
class NaiveDeletion(DataBatches):
    """Naive deletion: keep fine-tuning on the retained data only, ``L = mean_b ||eps_theta(sqrt(abar) x + sigma eps, t)
    - eps||^2`` (summed over pixels) with x from the training set without the forget images.

    Follows claserken/SISS: ``losses/ddpm_deletion_loss.py`` ``naive_del`` (``loss_x = (all_noise_preds - noise) **
    2``, ``loss = loss_x``) on ``dataset_all`` with ``filter: nondeletion`` (``config/delete_celeb.yaml``), and
    ``delete_celeb.py`` / ``delete_tshirt.py`` (``loss.sum() / train_batch_size``, ``clip_grad_norm_(..., 1.0)``).
    Deviations: plain Adam from the runner (the reference: AdamW, betas 0.95/0.999, weight decay 1e-6); uniform t as in
    ``delete_tshirt.py``.
    Sweep: ``--grid eps`` sets ``steps``.
    """

    name = "naive"
    kinds = ("data",)
    Config = MethodConfig
    grid_params = {"eps": "steps"}
    default_grids = NAIVE_GRID

    def losses(self) -> dict[str, Tensor]:
        x, cond, _ = self.rows("retain", self.cfg.batch_size)
        x_t, t, noise = self.noised(x)
        return {"loss": per_sample_sse(self.net(x_t, t, cond), noise)}
