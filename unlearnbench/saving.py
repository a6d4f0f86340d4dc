"""Unlearned weights beside a trial's record (``run --save-models``), and the one call that loads them back.

A network with a ``sampling_hook`` (an inference-time method, SLD) also gets ``sampling_hook.json``, which
:func:`load_weights` turns back into the hook, so the loaded model samples as the trial's did.
LoRA-trained networks are saved as peft adapters (``adapter_config.json`` written by ``LoraConfig.save_pretrained``
and ``adapter_model.safetensors``, the files ``PeftModel.save_pretrained`` writes); any other network as a full
``model.safetensors`` state dict. Prompt embeddings are buffers outside the state dict: they are rebuilt by the task.

Load a trial's unlearned network (the task's ``net(x_t, t, cond)``; for ``sd-concept`` its ``.unet`` is a diffusers
UNet2DConditionModel with the adapters, usable as ``StableDiffusionPipeline.from_pretrained(MODEL, unet=net.unet)``)::

    from unlearnbench.saving import load_unlearned
    net = load_unlearned("runs/sd-concept-20261201-120000", "esd-eps1-s0")
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ADAPTER_CONFIG, ADAPTER_WEIGHTS, FULL_WEIGHTS = "adapter_config.json", "adapter_model.safetensors", "model.safetensors"
SAMPLING_HOOK = "sampling_hook.json"  # an inference-time method's sampler (SLD), part of the saved model


def save_unlearned(net: nn.Module, out_dir: str | os.PathLike) -> dict[str, str]:
    """Save ``net``'s weights to ``out_dir``; returns the record's artifact entries (``model``, ``model_format``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hook = getattr(net, "sampling_hook", None)
    if hook is not None:
        import json

        (out / SAMPLING_HOOK).write_text(json.dumps(hook.to_dict(), indent=1))
    if any("lora_" in n for n, _ in net.named_parameters()):
        from peft import get_peft_model_state_dict

        net.peft_config["default"].save_pretrained(str(out))
        save_file({k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(net).items()},
                  str(out / ADAPTER_WEIGHTS))
        return {"model": str(out), "model_format": "peft-lora"}
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(out / FULL_WEIGHTS))
    return {"model": str(out), "model_format": "state-dict"}


def load_weights(net: nn.Module, model_dir: str | os.PathLike) -> nn.Module:
    """Put the weights saved by :func:`save_unlearned` into a freshly built network of the same task; returns it."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if (d / ADAPTER_CONFIG).is_file():
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        inject_adapter_in_model(LoraConfig.from_pretrained(str(d)), net)
        result = set_peft_model_state_dict(net, load_file(str(d / ADAPTER_WEIGHTS)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{d}: adapter weights do not fit this network: {result.unexpected_keys[:3]}")
    elif (d / FULL_WEIGHTS).is_file():
        net.load_state_dict(load_file(str(d / FULL_WEIGHTS)))
    else:
        raise FileNotFoundError(f"{d}: no saved weights ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}, or {FULL_WEIGHTS}); "
                                f"was the run made with --save-models?")
    load_sampling_hook(net, d)
    return net.eval()


def load_sampling_hook(net: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Put the sampling hook saved in ``folder`` (``sampling_hook.json``, an inference-time method's sampler) on
    ``net``; a folder without one leaves ``net`` as it is. Returns ``net``."""
    f = Path(folder) / SAMPLING_HOOK
    if f.is_file():
        import json

        from unlearnbench.methods import METHODS

        from unlearnbench.settings import read_small_file

        try:  # a file handed in from elsewhere (unlearnbench evaluate): small, plain JSON, checked by the method
            spec = json.loads(read_small_file(f, SAMPLING_HOOK, 1 << 20))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not JSON ({e})") from None
        name = spec.get("method") if isinstance(spec, dict) else None
        if name not in METHODS or not hasattr(METHODS.get(name), "load_hook"):
            raise ValueError(f"{f}: names no method with a sampling hook ({name!r})")
        net.sampling_hook = METHODS.get(name).load_hook(spec)
    return net


def load_unlearned(run_dir: str | os.PathLike, trial_id: str, device: str | torch.device = "cpu",
                   cache_dir: str | None = None) -> nn.Module:
    """The unlearned network of trial ``trial_id`` in ``run_dir``: the task is rebuilt from the record's options
    and the saved weights are loaded into its network."""
    from unlearnbench.records import RECORDS, artifact_path, iter_latest, read_records
    from unlearnbench.tasks import TASKS

    run = Path(run_dir)
    recs = {r["trial_id"]: r for r in iter_latest(read_records([run / RECORDS]))}
    if trial_id not in recs:
        raise KeyError(f"{run}: no trial {trial_id!r}; trials: {', '.join(sorted(recs))}")
    rec = recs[trial_id]
    model = artifact_path(rec, "model")
    if model is None:
        raise FileNotFoundError(f"trial {trial_id} saved no weights inside {run} (status {rec['status']}; "
                                f"run with --save-models)")
    task = TASKS.get(rec["task"]["name"])(rec["task"].get("options"), cache_dir=cache_dir)
    net = task.build(int(rec["seed"]), device=device).net
    return load_weights(net, model)

