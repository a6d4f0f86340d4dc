"""Batches for the data-unlearning methods (fkl, SISS, SalUn on data tasks): rows of the training, retain and forget
sets with their prompts, forward-noised."""
from __future__ import annotations

import torch
from torch import Tensor

from unlearnbench.methods.base import Method


class DataBatches(Method):
    """Mixin for data tasks. Prompts come from ``bundle.extras[f"{which}_cond"]`` when the task gives per-row labels,
    otherwise every row uses the null prompt."""

    def rows(self, which: str, n: int, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x0, cond, idx) for ``n`` rows of ``train``/``retain``/``forget`` data."""
        b = self.bundle
        data = getattr(b, f"{which}_data")
        if data is None:
            raise ValueError(f"method {self.name} needs the task's {which}_data, which it does not provide")
        x0, idx = b.draw(data, n, self.gen, idx)
        labels = b.extras.get(f"{which}_cond")
        cond = labels[idx].to(self.device) if labels is not None else self.cond(b.null_cond, n)
        return x0, cond, idx

    def forget_rows_per_group(self, per_group: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``per_group`` forget rows for every constraint group: (x0, cond, idx, group) with group [n] long."""
        groups = self.bundle.group_index()
        chunks = []
        for g in range(int(groups.max()) + 1):
            members = torch.nonzero(groups == g).flatten()
            pick = members[torch.randint(0, len(members), (per_group,), generator=self.gen)]
            chunks.append(pick)
        idx = torch.cat(chunks)
        x0, cond, idx = self.rows("forget", len(idx), idx)
        return x0, cond, idx, groups[idx].to(self.device)
