"""``dae-gen-train``: train any method on any dataset; the run directory gets config, checkpoints, metrics, grids.

Examples::

    dae-gen-train                                   # NCSN score net on the 8×8 digits (CPU, minutes)
    dae-gen-train experiment=mdsm_toy               # a preset
    dae-gen-train experiment=ncsn_toy debug=default # the same, a few steps only
    dae-gen-train hydra.run.dir=outputs/my_run      # same directory again: resumes its stored config
    dae-gen-train run=outputs/my_run trainer.steps=6000   # resume with more steps (recorded in its history)
    torchrun --standalone --nproc_per_node=2 -m dae_gen.cli.train trainer.batch_size=64

A folder that holds a run is resumed with the config it stores; see :mod:`dae_gen.resume` for what a
command line may change. Everything is built and checked before the first write into the folder.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dae_gen import distributed as D
from dae_gen.benchmark import training_workload
from dae_gen.cli.checks import building, check_arguments, check_positive, check_threads, check_values, set_threads
from dae_gen.cli.launch import CONFIG_PATH, command_line, removed_if_refused, reports_user_errors, run_cli
from dae_gen.cli.logs import collected_log, run_log
from dae_gen.cli.sampling import sampler_label
from dae_gen.errors import CheckpointError, ConfigError, DataError
from dae_gen.posthoc_ema import SIGMA_REL_MAX, PostHocEMAHook
from dae_gen.precision import resolve_amp
from dae_gen.resume import LAUNCH_KEYS
from dae_gen.run import build_sampler
from dae_gen.run_folder import POSTHOC_EMA_DIR, ResumePlan, RunDir
from dae_gen.settings import check_keywords
from dae_gen.train_hooks import HOOK_SETTINGS, Hook, default_hooks
from dae_gen.viz import reference_points, sample_saver

log = logging.getLogger("dae_gen.cli")
#: Types of the top-level keys of configs/train.yaml.
TRAIN_KEYS = {"seed": int, "device": str}


def train(cfg: DictConfig, run_dir: str | Path, *, touched: Iterable[str] | None = None,
          command: str | None = None) -> dict[str, float]:
    """Build data, model, sampler and trainer from a composed config and train in ``run_dir``.

    If ``run_dir`` holds a run, resume it with its stored config (see :meth:`dae_gen.run_folder.RunDir.plan`).
    touched:  the keys this launch's command line sets (``None``: every key of ``cfg`` is compared).
    command:  the command line recorded in ``config_history.jsonl``.
    """
    run_dir = RunDir(run_dir)
    requested = OmegaConf.to_container(cfg, resolve=True)
    for key in LAUNCH_KEYS:
        requested.pop(key, None)
    touched = None if touched is None else list(touched)
    device = D.init_distributed(run_dir.stored_device(requested, touched))  # before the (collective) lock
    with contextlib.ExitStack() as held:
        with collected_log() as earlier:  # lines logged before train.log may be written: copied there after
            # no other process may write here now (rank 0 holds the lock; a refusal ends every rank); released
            # (removed) if anything fails. The plan reads the newest readable checkpoint, once.
            held.enter_context(run_dir.lock())
            plan = run_dir.plan(requested, touched)
            trainer, hooks, plan.config = build(plan.config, run_dir=run_dir.path, device=device, plan=plan)
        start = plan.step
        if start >= trainer.steps:
            log.info("%s is already at trainer.steps=%d: nothing to train (raise trainer.steps to train on)",
                     run_dir.path, start)
            return {"step": float(start), "resumed": 1.0}
        if not D.is_main_process():
            return trainer.fit(plan=plan, hooks=hooks)
        run_dir.write_config(plan.config)
        history = run_dir.record_launch(command=command or " ".join(sys.argv), step=start, changes=plan.changes)
        with run_log(run_dir.path, earlier):
            if plan.changes:
                log.info("resuming %s with changes (recorded in %s): %s", run_dir.path, history.name,
                         "; ".join(map(str, plan.changes)))
            return trainer.fit(plan=plan, hooks=hooks)


def build(config: dict[str, Any], *, run_dir: Path, device: torch.device, plan: ResumePlan | None = None
          ) -> tuple[Any, list[Hook], dict]:
    """Check the config and build everything from it, nothing written: the trainer (with ``plan``'s checkpoint
    state loaded, checked to fit), the hooks around its steps, and the config to store (with ``data_shape`` and
    ``data_info``)."""
    check_values(config, TRAIN_KEYS)
    check_arguments(config, skip=("sampler", "trainer"))  # the sampler: by build_sampler, naming its settings
    trainer_cfg = config["trainer"]
    posthoc_ema_hook(trainer_cfg.get("posthoc_ema"))  # its settings, checked before anything is built
    check_trainer_node(trainer_cfg)
    phase_lrs = [f"trainer.phase_lr.{phase}" for phase in trainer_cfg.get("phase_lr") or {}]
    check_positive(config, "trainer.optimizer.lr", *phase_lrs)
    check_threads(config.get("threads"))
    with building("dataset"):
        data = instantiate(config["dataset"])
    info = data.info.as_dict()
    if "data_info" in config and config["data_info"]["shape"] != info["shape"]:
        raise DataError(f"the dataset now gives {info['name']} examples of shape {info['shape']}, but this run was "
                        f"trained on {config['data_info']['name']} of shape {config['data_info']['shape']}")
    check_class_labels(config, data)
    config = {**config, "data_shape": list(data.shape), "data_info": info}  # so sampling never rebuilds the dataset
    model = build_model(config, data)
    sampler, settings = build_grid_sampler(config, model)
    set_threads(config.get("threads"), device=device, workload=training_workload(
        model, batch_size=int(trainer_cfg["batch_size"]), device=device,
        amp=resolve_amp(trainer_cfg.get("amp", "none"), device, warn=False, where="trainer.amp")))
    evaluator = None
    if config.get("metrics"):
        with building("metrics"):
            evaluator = instantiate(config["metrics"])(data=data, sampler=sampler)
    title = f"{type(model).__name__} · {sampler_label(settings)} · step {{step}}"
    trainer, hooks = build_trainer(config, model=model, data=data, sampler=sampler, run_dir=run_dir, device=device,
                                   save_samples=sample_saver(data.info, reference=reference_points(data),
                                                             title=title),
                                   evaluator=evaluator, run_config=config)
    if plan is None or plan.state is None:
        return trainer, hooks, config
    step, checkpoint = plan.step, plan.checkpoint
    if trainer.steps < step:
        raise ConfigError(f"trainer.steps={trainer.steps} is below this run's step {step} ({checkpoint}); give "
                          f"trainer.steps > {step} to train on")
    try:
        trainer.load_state_dict(plan.state)  # the resume must fit before anything is written
    except CheckpointError as err:
        raise CheckpointError(f"{checkpoint}: {err}") from err
    return trainer, hooks, config


def check_class_labels(config: Mapping[str, Any], data) -> None:
    """A class-conditional model (``model.n_classes`` > 0) needs a dataset with integer labels, all below
    ``n_classes``; a one-line ConfigError naming ``model.n_classes`` otherwise."""
    n_classes = int(config["model"].get("n_classes", 0) or 0)
    if n_classes < 1:
        return
    labels = getattr(data, "labels", None)
    if labels is None:
        raise ConfigError(f"model.n_classes={n_classes}: a class-conditional model trains on labelled data, but "
                          f"{data.info.name} has no labels; use a labelled dataset (digits, fmnist, cifar10) or "
                          f"model.n_classes=0")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.ndim != 1:
        raise ConfigError(f"model.n_classes={n_classes}: expected one integer class per example, but the labels of "
                          f"{data.info.name} are {labels.dtype} of shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ConfigError(f"model.n_classes={n_classes}: the labels of {data.info.name} lie in "
                          f"{int(labels.min())}..{int(labels.max())}, outside 0..{n_classes - 1}; set "
                          f"model.n_classes={int(labels.max()) + 1}")


def build_model(config: Mapping[str, Any], data) -> Any:
    """The ``model`` node for ``data``'s shape, with the initial weights of ``config.seed``."""
    torch.manual_seed(config["seed"])  # the initial weights (the trainer also broadcasts rank 0's to every rank)
    with building("model"):
        return instantiate(config["model"], data_shape=list(data.shape))


def build_grid_sampler(config: Mapping[str, Any], model) -> tuple[Any, dict]:
    """The ``sampler`` node's driver and settings, checked on ``model`` with an empty batch (now, rather than at
    the first grid)."""
    with building("sampler"):
        sampler, settings = build_sampler(config["sampler"])
        sampler(model, 0)
    return sampler, settings


def split_trainer_node(node: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``trainer`` node's keys as ``(step mechanics, hook settings)``: the trainer's own arguments (with
    ``_target_``), and the settings of :func:`~dae_gen.train_hooks.default_hooks` (:data:`HOOK_SETTINGS`)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    mechanics = {key: value for key, value in node.items() if key not in HOOK_SETTINGS and key != "posthoc_ema"}
    settings = {key: value for key, value in node.items() if key in HOOK_SETTINGS}
    return mechanics, settings


def check_trainer_node(node: Mapping[str, Any]) -> None:
    """The ``trainer`` node's keys, each one an argument of its trainer or a hook setting, with a value of the
    annotated type; nested nodes (``optimizer``, ``lr_schedule``) against their own targets."""
    mechanics, settings = split_trainer_node(node)
    try:
        check_arguments(mechanics, "trainer")
    except ConfigError as err:
        message = str(err)
        if not any(message.startswith(f"trainer.{key}: ") and "has no argument" in message for key in mechanics):
            raise
        raise ConfigError(f"{err}, and its hooks' settings are {list(HOOK_SETTINGS)}") from None
    check_keywords(default_hooks, settings, where="trainer", noun="setting")


def build_trainer(config: Mapping[str, Any], *, model, data, run_dir: Path, device: torch.device, sampler=None,
                  save_samples=None, evaluator=None, run_config: dict | None = None, **settings: Any
                  ) -> tuple[Any, list[Hook]]:
    """The ``trainer`` node built over already-built objects: the trainer from its step-mechanics keys, and the
    hooks around its steps from its hook settings (``settings``: overrides of those, e.g. ``progress=False``),
    with ``sampler``/``save_samples`` drawing the grids and ``evaluator`` the periodic metrics."""
    trainer_cfg = config["trainer"]
    if isinstance(trainer_cfg, DictConfig):
        trainer_cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    mechanics, node_settings = split_trainer_node(trainer_cfg)
    posthoc = posthoc_ema_hook(trainer_cfg.get("posthoc_ema"))  # its state in the checkpoints: the trainer's hook
    with building("trainer"):
        make_trainer = instantiate(mechanics)  # a partial; the objects below must not be re-instantiated
        trainer = make_trainer(objective=model, data=data, run_dir=run_dir, seed=config["seed"], device=device,
                               run_config=run_config, hooks=[posthoc] if posthoc is not None else [])
        hooks = default_hooks(**{**node_settings, **settings}, sampler=sampler, save_samples=save_samples,
                              evaluator=evaluator)
    return trainer, hooks


def posthoc_ema_hook(settings: Mapping[str, Any] | None) -> PostHocEMAHook | None:
    """The hook of ``trainer.posthoc_ema: {sigma_rels, snapshot_every}``; None when ``snapshot_every`` is null (off).
    Each value is checked here, with a ConfigError naming its key."""
    if settings is None:
        return None
    where = "trainer.posthoc_ema"
    if not isinstance(settings, Mapping):
        raise ConfigError(f"{where}: expected {{sigma_rels: [...], snapshot_every: N or null}}, got {settings!r}")
    unknown = sorted(set(settings) - {"sigma_rels", "snapshot_every"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; expected sigma_rels and snapshot_every")
    every = settings.get("snapshot_every")
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"{where}.snapshot_every: expected a positive number of steps or null (off), got {every!r}")
    lengths = settings.get("sigma_rels")
    if (not isinstance(lengths, (list, tuple)) or not lengths
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in lengths)):
        raise ConfigError(f"{where}.sigma_rels: expected a non-empty list of EMA lengths such as [0.05, 0.10], "
                          f"got {lengths!r}")
    for length in lengths:
        if not 0 < length < SIGMA_REL_MAX:
            raise ConfigError(f"{where}.sigma_rels: each length must be in (0, {SIGMA_REL_MAX:.4f}), got {length}; "
                              "EDM2 keeps 0.05 and 0.10")
    if len({float(s) for s in lengths}) != len(lengths):
        raise ConfigError(f"{where}.sigma_rels: the lengths must differ (each is one snapshot file), got {lengths}")
    return PostHocEMAHook(sigma_rels=[float(s) for s in lengths], snapshot_every=every, folder=POSTHOC_EMA_DIR)


def touched_keys(requested: DictConfig) -> set[str] | None:
    """The config keys (subtrees) this launch's command line sets, from Hydra's record of its overrides.

    ``key=value``: that key. A group whose package is its own key (``dataset=``, ``model=``, ``metrics=``...):
    that whole subtree. A group of the global package (``experiment=``, ``debug=``) may set any key, so with one
    the whole composed config is compared with the stored one (None).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    task = OmegaConf.to_container(hydra_cfg.overrides.task)
    keys = set()
    for override in OverridesParser.create().parse_overrides(task):
        name = override.key_or_group
        if name not in choices:
            keys.add(name)
        elif choices[name] is None or name in requested:  # its own subtree, or switched off (metrics=null)
            keys.add(name)
        elif "/" not in name:
            return None
    return keys


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@reports_user_errors
def app(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with removed_if_refused(run_dir):
            if cfg.get("run") is not None:
                check_run_argument(str(cfg.run), run_dir)
            result = train(cfg, run_dir, touched=touched_keys(cfg), command=command_line("dae-gen-train"))
    finally:
        D.shutdown()
    losses = [value for key, value in result.items() if key.startswith("loss/")]
    return losses[-1] if losses else 0.0  # the value a --multirun sweeper optimises: the last phase's loss


def check_run_argument(run: str, run_dir: Path) -> None:
    """``run=`` names a run to resume: a run directory, or its newest checkpoint file."""
    folder = RunDir.of(run).path
    if folder.resolve() != run_dir.resolve():
        raise ConfigError(f"run={run} and hydra.run.dir={run_dir} name different folders; give one of them")
    newest = RunDir(folder).latest_checkpoint()
    if newest is None:
        raise ConfigError(f"run={run}: {folder} holds no checkpoint to resume (checkpoints/ckpt_<step>.pt); start "
                          "a new run with hydra.run.dir=DIR instead")
    if Path(run).is_file() and Path(run).resolve() != newest.resolve():
        raise ConfigError(f"run={run}: training resumes from the run's newest checkpoint {newest}, not an older one; "
                          "to branch from it, copy it into a new folder's checkpoints/ and train there")


def main() -> None:
    run_cli(app, "dae-gen-train")


if __name__ == "__main__":
    main()
