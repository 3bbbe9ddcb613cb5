"""The class labels, guidance weight and guide of a ``dae-gen-sample`` / ``dae-gen-eval`` command line
(``class_labels=[0,1,2]``, ``guidance=w``, ``guide_run=PATH``), checked against the run before any sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dae_gen.conditioning import check_guidance, class_list, conditioned
from dae_gen.run import Run, load_run


@dataclass
class Conditioning:
    """What a command line conditions on: ``classes`` (None: unconditional), guidance ``w`` and the guide run."""

    classes: list[int] | None
    guidance: float
    guide: Run | None

    def model(self, run: Run, labels: Tensor | None) -> tuple[Any, dict | None]:
        """The score model and ``cond`` to sample ``labels`` with (``dae_gen.conditioning.conditioned``)."""
        return conditioned(run.model, labels=None if labels is None else labels.to(run.device),
                           guidance=self.guidance, guide=None if self.guide is None else self.guide.model)

    def record(self, labels: Tensor | None = None, **extra: Any) -> dict[str, Any]:
        """The conditioning as ``sample.json`` / ``eval.json`` hold it."""
        guide = None if self.guide is None else {"run": str(self.guide.path), "checkpoint": str(self.guide.checkpoint),
                                                 "step": self.guide.step, "use_ema": self.guide.use_ema}
        kind = ("autoguidance" if guide is not None else "classifier-free") if self.guidance else "none"
        out = {"class_labels": self.classes, "guidance": self.guidance, "guidance_kind": kind, "guide": guide,
               "guidance_rule": "s = (1 + w)·s(x | c) − w·s_guide", **extra}
        if labels is not None:
            out["label_counts"] = {int(c): int((labels == c).sum()) for c in labels.unique()}
        return out


def cli_conditioning(cfg: DictConfig, run: Run) -> Conditioning:
    """``class_labels``, ``guidance`` and ``guide_run`` of ``cfg`` for ``run``; a one-line ConfigError naming the key
    (an unconditional run with class_labels, w < 0, CFG on an unconditional run, a guide of another shape)."""
    spec = cfg.get("class_labels")
    if OmegaConf.is_list(spec):
        spec = OmegaConf.to_container(spec)
    classes = class_list(spec, n_classes=run.n_classes, where="class_labels")
    guidance = cfg.get("guidance", 0.0)
    guide = None
    if cfg.get("guide_run") is not None:
        check_guidance(run.model, guidance=guidance, where="guidance")  # w first: a bad w costs no loading
        guide = load_run(str(cfg.guide_run), device=run.device, use_ema=bool(cfg.get("use_ema", True)))
    check_guidance(run.model, guidance=guidance, guide=None if guide is None else guide.model, where="guidance",
                   guide_where="guide_run")
    return Conditioning(classes=classes, guidance=float(guidance), guide=guide)


__all__ = ["Conditioning", "cli_conditioning"]
