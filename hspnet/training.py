"""Training HSPNet with accelerate: :func:`train`, in the order of transformers'
`run_image_classification_no_trainer.py`.

`hspnet train` and `scripts/train.py` are thin command lines over :func:`main`. :func:`train` reads top to bottom:
the accelerator, the output folder and logging, the seed, the data, the model (which owns its loss), the optimizer
and schedule, `accelerator.prepare`, the resume, the loop (train, evaluate, select, checkpoint), the final
evaluation of the selected model, saving and the Hub upload. The pieces live beside it:

- :mod:`hspnet.training_args`: :class:`TrainingConfig`, every option (`transformers.HfArgumentParser`, YAML files);
- :mod:`hspnet.engine`: datasets -> transforms -> loaders and the evaluation loop (shared with evaluation);
- :mod:`hspnet.recipe`: Adam parameter groups, the one-cycle schedule, the weight EMA, the model selection;
- :mod:`hspnet.run_log`: the run's log (console and `train.log`; a failed write stops the run);
- :mod:`hspnet.run_folder`: the output-folder lock, `--overwrite_output_dir` through a staging folder, whole files;
- :mod:`hspnet.resume`: `training_args.json`, the resume checks, the loop's checkpointed state;
- :mod:`hspnet.distributed`: a failure on one process stops every process of the run;
- :mod:`hspnet.hub`: the model card and the background uploads (`--hub_strategy`, `--resume_from_checkpoint hub`).

The loss is the model's: the loop calls `model(pixel_values=..., labels=..., epoch=..., indices=...)` and steps on
`outputs.loss` (the model samples labels itself under `label_sample_size`); its state (ROLE's label estimates, the
epoch of SPLC / LL-R) is checkpointed with the run (:mod:`hspnet.checkpoint`).

What protects a run's results: the output folder is locked; a folder holding an earlier run is only replaced by a
complete new run; each checkpoint carries `training_args.json` and a resume with other result-changing settings or
other data is refused, listing every difference; a truncated checkpoint file is named before anything is loaded; a
NaN/inf loss or gradient stops the run (:class:`TrainingDivergedError`) before that step is applied; every file
appears whole; uploads run in the background from snapshots, a failed one is retried with the next save and only a
failed final upload fails the run. The Hub token is never logged or saved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from typing import Any

import torch

from hspnet import hub
from hspnet.checkpoint import apply_checkpoint, read_checkpoint, save_checkpoint
from hspnet.cli_types import one_line
from hspnet.distributed import on_all, on_main
from hspnet.engine import add_index_column, collate, evaluate_model, load_datasets, make_transform  # noqa: F401
from hspnet.files import write_json, write_text
from hspnet.run_log import close_log_handlers, setup_run_logging
from hspnet.hub import HubUploader, HubUploadError, model_card  # noqa: F401 - re-exported
from hspnet.recipe import (  # noqa: F401 - the recipe's names, importable from here as before
    ModelEMA,
    ema_decay,
    loss_parameter_group,
    one_cycle_scheduler,
    parameter_groups,
    select_source,
)
from hspnet.resume import (  # noqa: F401
    SETTINGS_NAME,
    ResumeMismatchError,
    TrainingState,
    check_best_model,
    check_resume_settings,
    dataset_fingerprint,
    label_mismatch,
    read_checkpoint_settings,
    find_checkpoint,
    resolve_checkpoint,
    run_settings,
    settings_differences,
)
from hspnet.run_folder import (  # noqa: F401
    BEST_MARKER_NAME,
    LOCK_NAME,
    OutputDirInUseError,
    OutputDirLock,
    RunFolders,
    checkpoint_dirs,
    make_folder,
    model_files,
    plan_folders,
    remove_leftovers,
    save_model_files,
    swap_in,
    writing,
)
from hspnet.training_args import (  # noqa: F401
    TrainingConfig,
    build_argument_parser,
    load_config,
    parse_training_args,
    read_yaml_options,
)

logger = logging.getLogger("hspnet.train")


class TrainingDivergedError(ValueError):
    """The loss or its gradients became NaN or infinite; training stopped before applying that step."""


# ---------------------------------------------------------------------------------------------------------------------
# Model and loss
# ---------------------------------------------------------------------------------------------------------------------


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub id ("org/name"): absolute, relative with ./ or ../, ~, or more than one '/'."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or os.path.splitext(name)[1] in (".pt", ".pth", ".bin", ".safetensors"))


def _check_source(name: str, option: str) -> None:
    if not os.path.exists(os.path.expanduser(name)) and _looks_like_a_path(name):
        raise FileNotFoundError(f"--{option} {name!r}: no such file or folder")


def build_model(config: TrainingConfig, hierarchy):
    """A new HSPNet on `config.clip_model` (or the tiny random CLIP), or an existing HSPNet to fine-tune, with this
    run's loss (`loss`, `loss_kwargs`) and label sampling (`label_sample_size`) in its config. Errors name the option
    and the path or Hub id (a missing folder, a Hub id not available offline, other labels)."""
    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification
    from hspnet.tiny_clip import TINY_RANDOM, load_tiny_random

    # the model's config records the loss choice, not run state such as ROLE's number of training images
    run_options = dict(loss=config.loss, label_sample_size=config.label_sample_size,
                       loss_kwargs={k: v for k, v in (config.loss_kwargs or {}).items() if k != "num_train_images"})
    if config.model_name_or_path:
        source = config.model_name_or_path
        _check_source(source, "model_name_or_path")
        try:
            model = HSPNetForImageClassification.from_pretrained(os.path.expanduser(source),
                                                                 trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as error:
            kind = OSError if isinstance(error, OSError) else ValueError
            raise kind(f"--model_name_or_path {source!r}: cannot load an HSPNet model ({one_line(error)})") from None
        if model.config.label_names != list(hierarchy.labels):
            raise ValueError(
                f"--model_name_or_path {source!r} was trained on other labels than the dataset "
                f"{config.dataset!r}: {label_mismatch(model.config.label_names, list(hierarchy.labels))}"
            )
        if (list(model.config.group_names) != list(hierarchy.groups)
                or list(model.config.label_to_group) != list(hierarchy.label_to_group)):
            logger.warning("%s has another label hierarchy (groups) than the dataset; the model's own is kept",
                           source)
        for name, value in run_options.items():
            setattr(model.config, name, value)
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(os.path.expanduser(source))
        except (OSError, ValueError):
            pass
        return model
    relation = config.relation_file
    if relation is not None and not os.path.isfile(os.path.expanduser(relation)):
        raise FileNotFoundError(f"--relation_file {relation!r}: no such file")
    hierarchy_args = dict(labels=list(hierarchy.labels), groups=list(hierarchy.groups),
                          label_to_group=list(hierarchy.label_to_group),
                          relation=os.path.expanduser(relation) if relation else None)
    if config.clip_model == TINY_RANDOM:
        clip, tokenizer, image_processor = load_tiny_random(seed=config.seed)
        return HSPNetForImageClassification.from_clip(clip, tokenizer=tokenizer, image_processor=image_processor,
                                                      **hierarchy_args, **run_options)
    source = config.clip_model
    _check_source(source, "clip_model")
    try:
        tokenizer = None  # an OpenAI weights file (RN50.pt) holds no tokenizer: all OpenAI CLIPs share this one
        if config.tokenizer_name or os.path.isfile(os.path.expanduser(source)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name or "openai/clip-vit-base-patch32")
        return HSPNetForImageClassification.from_clip(os.path.expanduser(source), tokenizer=tokenizer,
                                                      **hierarchy_args, **run_options)
    except OSError as error:  # not a CLIP folder, a Hub id not available (offline?), an unreadable weight file
        raise OSError(f"--clip_model {source!r}: cannot load this CLIP ({one_line(error)})") from None


@contextlib.contextmanager
def _without_run_state(model):
    """While saving `model`: its config without this run's state (ROLE's `num_train_images`, the training-only
    `label_sample_size`), so that the saved config records the loss choice only. Restored afterwards (the cached
    loss, built for the same spec, is kept)."""
    config = model.config
    loss_kwargs, label_sample_size = config.loss_kwargs, config.label_sample_size
    config.loss_kwargs = {k: v for k, v in (loss_kwargs or {}).items() if k != "num_train_images"}
    config.label_sample_size = None
    try:
        yield model
    finally:
        config.loss_kwargs, config.label_sample_size = loss_kwargs, label_sample_size


def _scalar_config(config: TrainingConfig) -> dict:
    """The options as TensorBoard's hyper-parameters (scalars; dicts as JSON), without secrets."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()}


def _diverged(kind: str, value: float | None, step: int, epoch: int, batch: int, steps_per_epoch: int,
              process: int | None, state: TrainingState, folders: RunFolders, selection_split: str,
              last_checkpoint: str | None) -> TrainingDivergedError:
    what = (f"the loss is {value}" + (f" on process {process}" if process is not None else "")
            if kind == "loss" else "the gradients are not finite (NaN or inf)")
    if state.best_epoch >= 0:
        kept = (f"the best model so far (epoch {state.best_epoch}, {selection_split} mAP {state.best_metric:.2f}) is "
                f"kept in {folders.working}")
    else:
        kept = "no model was saved yet"
    if folders.staging:
        kept += f"; {folders.output_dir} is unchanged"
    checkpoint = f"; last checkpoint: {last_checkpoint}" if last_checkpoint else ""
    return TrainingDivergedError(
        f"training diverged at global step {step} (epoch {epoch}, batch {batch} of {steps_per_epoch}): {what}; "
        f"this step was not applied, {kept}{checkpoint}. Lower --lr / --gcn_lr (or use --mixed_precision no) and "
        "start a new run."
    )


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def train(config: TrainingConfig) -> dict:
    """Train, select, save and (optionally) upload an HSPNet model. Returns the results written to
    `output_dir/all_results.json`.

    Safety rules (see the README): the output folder is locked for the run (a second run on it fails at once); a
    folder holding an earlier run is only replaced by `--overwrite_output_dir` once the new run is complete; every
    output file appears whole; a resume must use the settings of the checkpoint's run; a NaN/inf loss stops the run
    before that step is applied. Errors are `OSError` / `ValueError` with a one-line message."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    use_cpu = config.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to if config.with_tracking else None,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    locks: list[OutputDirLock] = []
    uploaders: list[HubUploader] = []
    interrupted = False
    try:
        results = _train(config, accelerator, locks, uploaders)
        # the end of a run, with every process still here: the DDP wrapper goes first (its reducer holds the process
        # group), then the trackers and the process group (`end_training`). A gloo group torn down at interpreter
        # exit, after a peer has gone, could hang its process forever in the group's destructor.
        accelerator.wait_for_everyone()
        accelerator.free_memory()
        accelerator.end_training()
        return results
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # uploads in flight finish first (after a failure too: the last pushed state is what a resume elsewhere
        # needs), unless the user interrupted; then the lock goes (a next run may clean the snapshots)
        for uploader in uploaders:
            uploader.close(wait=not interrupted)
        for lock in reversed(locks):
            lock.release()
        close_log_handlers(logger)


def _open_output_dir(config: TrainingConfig, accelerator, locks: list[OutputDirLock]) -> RunFolders:
    """Lock `output_dir` (main process, before anything else), plan where the run writes (a staging folder for an
    `--overwrite_output_dir` run over an earlier one), clean a killed run's temporary files, and log into it."""
    on_main(accelerator, lambda: locks.append(OutputDirLock(config.output_dir).acquire()))
    folders = on_all(accelerator, lambda: plan_folders(config))
    working = folders.working

    def prepare_working_folder():
        if folders.staging and not config.resume_from_checkpoint and os.path.exists(working):
            shutil.rmtree(working)  # an interrupted earlier overwrite run: this one starts again
        if folders.staging:
            locks.append(OutputDirLock(working).acquire())
        remove_leftovers(working)

    on_main(accelerator, prepare_working_folder)
    accelerator.project_configuration.project_dir = working
    accelerator.project_configuration.logging_dir = working
    on_all(accelerator, lambda: setup_run_logging(logger, accelerator, working, config.hub_token))
    logger.info("processes: %d (distributed: %s), device: %s, mixed precision: %s", accelerator.num_processes,
                accelerator.distributed_type, accelerator.device, accelerator.mixed_precision)
    if folders.staging:
        logger.info("writing into %s; %s is replaced by it only when this run is complete", working,
                    folders.output_dir)
    return folders


def _training_splits(config: TrainingConfig, datasets) -> tuple[Any, dict, str]:
    """`(train_set, eval_sets, selection_split)`: the training split with an `index` column, and the split the model
    is selected on ("validation", or "test" under the authors' protocol) with the test split."""
    selection_split = "validation" if config.protocol == "heldout" else "test"
    logger.info(
        "model selection on the %r split (%s protocol)%s", selection_split, config.protocol,
        "" if config.protocol == "heldout" else ": the test set is used for model selection, as in the authors' code",
    )
    train_set = add_index_column(datasets["train"])
    if config.max_train_samples:
        train_set = train_set.select(range(min(config.max_train_samples, len(train_set))))
    eval_sets = {split: datasets[split] for split in dict.fromkeys([selection_split, "test"])}
    if config.max_eval_samples:
        eval_sets = {k: v.select(range(min(config.max_eval_samples, len(v)))) for k, v in eval_sets.items()}
    return train_set, eval_sets, selection_split


def _train(config: TrainingConfig, accelerator, locks: list[OutputDirLock], uploaders: list[HubUploader]) -> dict:
    import uuid

    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from hspnet.trainer import setup_loss_for_training

    # 1. the output folder (locked by the main process only, the others learn the outcome) and logging into it
    folders = _open_output_dir(config, accelerator, locks)
    working = folders.working

    # 2. a resume must continue the checkpoint's run: same settings (checked before any work), same data (below)
    checkpoint = find_checkpoint(config, accelerator, working)
    saved_settings = read_checkpoint_settings(checkpoint) if checkpoint else None
    if checkpoint:
        check_resume_settings(checkpoint, saved_settings, run_settings(config, accelerator))

    # 3. seed, then the data: the training split (with row indices, for ROLE) and the selection and test splits
    set_seed(config.seed)
    with accelerator.main_process_first():
        datasets, hierarchy = load_datasets(config)
    train_set, eval_sets, selection_split = _training_splits(config, datasets)
    num_labels = len(hierarchy.labels)
    fingerprint = dataset_fingerprint(hierarchy, {"train": train_set, **eval_sets})
    settings = run_settings(config, accelerator, fingerprint)
    if checkpoint:
        for note in check_resume_settings(checkpoint, saved_settings, settings, fingerprint):
            logger.warning("resuming %s with another %s: results may differ in the last digits", checkpoint, note)

    # 4. the model, which owns its loss: ROLE gets the number of training images and starts from the observed labels
    model = build_model(config, hierarchy)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    loss_module = setup_loss_for_training(model, train_set)
    if any(True for _ in loss_module.parameters()) and accelerator.num_processes > 1:
        raise ValueError(f"loss {config.loss!r} keeps per-image state; train it with a single process.")
    transform = make_transform(model.image_processor, num_labels)
    eval_batch = config.eval_batch_size or config.batch_size
    train_loader = DataLoader(train_set.with_transform(transform), batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, num_workers=config.num_workers)
    eval_loaders = {split: DataLoader(ds.with_transform(transform), batch_size=eval_batch, collate_fn=collate,
                                      num_workers=config.num_workers) for split, ds in eval_sets.items()}

    # 5. optimizer (the loss's own parameters at loss_lr_scale x lr), prepare, schedule, EMA, checkpointed objects
    groups = (parameter_groups(model, config.lr, config.gcn_lr, config.weight_decay)
              + loss_parameter_group(loss_module, config.lr, config.loss_lr_scale))
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    trained_parameters = [p for group in groups for p in group["params"]]
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_loader,
                                                                   *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    unwrapped = accelerator.unwrap_model(model)
    forward = (torch.compile(model, backend=config.torch_compile_backend or "inductor", mode=config.torch_compile_mode)
               if config.torch_compile else model)  # shares the parameters of `model`
    loss_module.to(accelerator.device)
    steps_per_epoch = len(train_loader)
    scheduler = one_cycle_scheduler(optimizer, steps_per_epoch, config.schedule_epochs, config.pct_start)
    ema = ModelEMA(unwrapped, ema_decay(steps_per_epoch, config.ema_keep_per_epoch)) if config.ema else None
    state = TrainingState(run_id=uuid.uuid4().hex)
    # label sampling draws from a generator of its own, seeded here and kept in the checkpoints (nothing else that
    # draws random numbers, such as a new DataLoader iterator on resume, changes the samples)
    label_generator = torch.Generator().manual_seed(config.seed) if config.label_sample_size is not None else None
    unwrapped.label_generator = label_generator
    run_state = dict(state=state, scheduler=scheduler, loss_module=loss_module, ema=ema,
                     label_generator=label_generator)
    if config.with_tracking:
        on_all(accelerator, lambda: accelerator.init_trackers("runs", config=_scalar_config(config)))

    total_steps = config.epochs * steps_per_epoch
    if config.max_train_steps:
        total_steps = min(total_steps, config.max_train_steps)
    logger.info("train images: %d, steps per epoch: %d (per process batch %d x %d processes), total steps: %d, "
                "schedule: %d epochs", len(train_set), steps_per_epoch, config.batch_size, accelerator.num_processes,
                total_steps, config.schedule_epochs)

    # 6. resume the checkpoint's state (weights, optimizer, scheduler, loss state, EMA, RNG, progress), or measure the
    # untrained model
    results: dict[str, Any] = {"selection_split": selection_split, "protocol": config.protocol,
                               "world_size": accelerator.num_processes}
    if checkpoint:
        # every file checked (pickles read without code execution) before anything is loaded
        contents = read_checkpoint(checkpoint, num_processes=accelerator.num_processes,
                                   process_index=accelerator.process_index, ema=ema is not None,
                                   label_sampling=label_generator is not None, scaler=accelerator.scaler is not None)
        try:
            accelerator.load_state(checkpoint)  # the weights and the optimizer, from the files checked above
        except Exception as error:  # noqa: BLE001 - a checkpoint that passed the file checks but does not load
            raise ValueError(f"checkpoint {checkpoint}: cannot be loaded ({one_line(error)})") from None
        apply_checkpoint(contents, **run_state)
        check_best_model(working, state, checkpoint)
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state.global_step,
                    state.global_step // steps_per_epoch)
        if state.test_before_training:
            results["test_before_training"] = state.test_before_training
    elif config.evaluate_before_training:
        before, _ = evaluate_model(model, eval_loaders["test"], accelerator, num_labels, "test (untrained)")
        results["test_before_training"] = state.test_before_training = before
        logger.info("before training: test mAP %.2f", before["mAP"])

    last_checkpoint = checkpoint

    # 7. the Hub: only the main process uploads; in the background, from snapshots, never stopping training
    uploader = None
    if config.push_to_hub and accelerator.is_main_process:
        uploader = HubUploader(config.hub_model_id, folder=working, strategy=config.hub_strategy,
                               token=config.hub_token, private=config.hub_private_repo, log=logger,
                               keep_checkpoints=config.checkpoints_total_limit or None)
        uploaders.append(uploader)
        logger.info("pushing to the Hub repository %s (hub_strategy %s)", config.hub_model_id, config.hub_strategy)
    elif not config.push_to_hub and config.hub_strategy != "end":
        logger.warning("hub_strategy %s has no effect without --push_to_hub true", config.hub_strategy)
    recipe = _recipe(config, accelerator)
    base_model = None if config.model_name_or_path else config.clip_model

    def push_progress(checkpoint_folder: str | None) -> None:
        """Queue an upload of the current state (main process); a failure here is logged, never raised."""
        if uploader is None or config.hub_strategy == "end":
            return
        try:
            marker = None
            if state.best_epoch >= 0:
                with open(os.path.join(working, BEST_MARKER_NAME), encoding="utf-8") as handle:
                    marker = json.load(handle)
            names = [n for n in model_files(working) if n != "README.md"] if marker is not None else []
            card = model_card(unwrapped.config, dataset=config.dataset, metrics=None, recipe=recipe,
                              repo_id=config.hub_model_id, base_model=base_model, license=config.license,
                              progress={"epoch": state.epoch, "epochs": config.epochs, "step": state.global_step,
                                        "total_steps": total_steps, "best_metric": state.best_metric,
                                        "best_epoch": state.best_epoch, "selection_split": selection_split})
            uploader.save(step=state.global_step, epoch=state.epoch, model_folder=working, model_file_names=names,
                          card=card, checkpoint=checkpoint_folder,
                          checkpoint_info={"run_id": state.run_id, "best_model": marker})
        except Exception as error:  # noqa: BLE001 - the upload is a copy; training goes on without it
            logger.warning("could not queue the upload of step %d to the Hub: %s", state.global_step,
                           hub.redact(one_line(error), config.hub_token))

    def save_training_state(name: str) -> None:
        # written under a temporary name, with the run's settings, and renamed when complete: a run killed while
        # saving never leaves a half-written checkpoint that `--resume_from_checkpoint latest` would pick
        nonlocal last_checkpoint
        folder = os.path.join(working, "checkpoints", name)

        def save():
            with writing(folder + ".partial", "the checkpoint"):
                save_checkpoint(accelerator, folder + ".partial", **run_state)

        on_all(accelerator, save)

        def publish():
            with writing(os.path.join(folder + ".partial", SETTINGS_NAME)):
                write_json(os.path.join(folder + ".partial", SETTINGS_NAME), settings)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(folder + ".partial", folder)
            if config.checkpoints_total_limit:
                for _, old in checkpoint_dirs(working)[: -config.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            push_progress(folder)

        on_main(accelerator, publish)
        last_checkpoint = folder

    def save_best(source_model, epoch: int, source: str) -> None:
        def save():
            with _without_run_state(source_model):
                save_model_files(source_model, working, save_function=accelerator.save)
            with writing(os.path.join(working, SETTINGS_NAME)):  # the run's options beside the model
                write_json(os.path.join(working, SETTINGS_NAME), settings)
            marker = os.path.join(working, BEST_MARKER_NAME)
            with writing(marker):
                write_json(marker, {"run_id": state.run_id, "epoch": epoch, "step": state.global_step,
                                    "source": source})

        on_main(accelerator, save)

    # 8. the loop: train an epoch, evaluate the regular and the EMA model, keep the better one if it improved, save the
    # training state
    check_gradients = accelerator.scaler is None  # fp16's scaler skips steps with inf gradients by design
    progress = tqdm(total=total_steps, initial=min(state.global_step, total_steps), desc="train",
                    disable=not accelerator.is_local_main_process)
    start = time.time()
    stop = state.global_step >= total_steps
    first_epoch = state.global_step // steps_per_epoch
    try:  # the bar is closed on errors too, so that the one-line error starts on its own line
        model.train()
        for epoch in range(first_epoch, config.epochs):
            if stop:
                break
            state.epoch = epoch
            train_loader.set_epoch(epoch)
            skip = state.global_step - epoch * steps_per_epoch
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            running, count = 0.0, 0
            for batch in loader:
                # the model's loss on the observed labels (with label_sample_size: on a sample of the labels)
                loss = forward(pixel_values=batch["pixel_values"], labels=batch["observed_labels"], epoch=epoch,
                               indices=batch["index"]).loss
                value = loss.detach().float().reshape(1)
                values = (accelerator.gather(value) if accelerator.num_processes > 1 else value).tolist()
                step = state.global_step + 1
                where = dict(step=step, epoch=epoch, batch=step - epoch * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch, state=state, folders=folders,
                             selection_split=selection_split, last_checkpoint=last_checkpoint)
                bad = next(((rank, v) for rank, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    raise _diverged("loss", bad[1], process=bad[0] if len(values) > 1 else None, **where)
                accelerator.backward(loss)
                if check_gradients:
                    grads = [p.grad for p in trained_parameters if p.grad is not None]
                    if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
                        raise _diverged("gradients", None, process=None, **where)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(unwrapped)
                state.global_step += 1
                progress.update(1)
                running += values[accelerator.process_index if len(values) > 1 else 0]
                count += 1
                if state.global_step % config.logging_steps == 0:
                    lrs = scheduler.get_last_lr()
                    progress.set_postfix(loss=f"{running / count:.3f}", lr=f"{lrs[0]:.2e}")
                    if config.with_tracking:
                        accelerator.log({"train/loss": running / count, "train/lr": lrs[0], "train/gcn_lr": lrs[-1],
                                         "train/epoch": epoch}, step=state.global_step)
                end_of_epoch = state.global_step % steps_per_epoch == 0
                if (str(config.checkpointing_steps).isdigit()
                        and state.global_step % int(config.checkpointing_steps) == 0 and not end_of_epoch):
                    save_training_state(f"step_{state.global_step}")
                if state.global_step >= total_steps:
                    stop = True
                    break
            if stop and state.global_step % steps_per_epoch != 0:
                logger.info("stopping mid-epoch at max_train_steps=%d", total_steps)

            candidates = [("regular", forward)] + ([("ema", ema.module)] if ema is not None else [])
            scores = {}
            for source, candidate in candidates:
                metrics, _ = evaluate_model(candidate, eval_loaders[selection_split], accelerator, num_labels,
                                            f"{selection_split} ({source})")
                scores[source] = metrics
                if config.with_tracking:
                    accelerator.log({f"{selection_split}_{source}/{k}": v for k, v in metrics.items()},
                                    step=state.global_step)
            source = select_source(scores)
            current = scores[source]["mAP"]
            state.history.append({"epoch": epoch, "step": state.global_step,
                                  **{f"{s}_mAP": m["mAP"] for s, m in scores.items()}})
            improved = current > state.best_metric
            if improved:
                save_best(unwrapped if source == "regular" else ema.module, epoch, source)
                state.best_metric, state.best_epoch, state.best_source = current, epoch, source
                state.best_metrics = scores[source]
                state.evaluations_without_improvement = 0
            else:
                state.evaluations_without_improvement += 1
            logger.info(
                "epoch %d: %s mAP regular %.2f%s -> best %.2f (epoch %d, %s)%s", epoch, selection_split,
                scores["regular"]["mAP"], f", EMA {scores['ema']['mAP']:.2f}" if "ema" in scores else "",
                state.best_metric, state.best_epoch, state.best_source, " [saved]" if improved else "",
            )
            if config.checkpointing_steps is not None:
                save_training_state(f"epoch_{epoch}-step_{state.global_step}")
            elif uploader is not None:  # no training states saved: every_save pushes after each evaluation
                push_progress(None)
            if config.patience is not None and state.evaluations_without_improvement >= config.patience:
                logger.info("early stopping: no improvement for %d evaluations", config.patience)
                break
    finally:
        progress.close()
    accelerator.wait_for_everyone()
    results["train_seconds"] = round(time.time() - start, 2)
    results["resumed_from"] = checkpoint
    results["best"] = {"epoch": state.best_epoch, "source": state.best_source,
                       f"{selection_split}_mAP": state.best_metric, f"{selection_split}_metrics": state.best_metrics}
    results["history"] = state.history

    # 9. evaluate: the selected model on the test set
    from hspnet import HSPNetForImageClassification

    best = on_all(accelerator, lambda: HSPNetForImageClassification.from_pretrained(working))
    best.to(accelerator.device)
    test_metrics, accumulator = evaluate_model(best, eval_loaders["test"], accelerator, num_labels, "test (best)")
    results["test"] = test_metrics
    if accumulator.num_samples:
        from hspnet.metrics import average_precision_ranked

        per_class = average_precision_ranked(accumulator.scores, accumulator.targets)
        results["test_per_class_AP"] = {name: round(100 * float(ap), 4) for name, ap in
                                        zip(hierarchy.labels, per_class)}
    logger.info("best model (%s, epoch %d): test mAP %.2f (selected on %s)", state.best_source, state.best_epoch,
                test_metrics["mAP"], selection_split)
    if "test_before_training" in results:
        logger.info("test mAP before training %.2f -> after %.2f", results["test_before_training"]["mAP"],
                    test_metrics["mAP"])
    if config.with_tracking:
        accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)

    # 10. save (model card, all_results.json; the staging folder swapped in) and push the final model
    def finish():
        if uploader is not None:
            results["hub"] = uploader.report()
        _write_outputs(config, working, best, test_metrics, results, accelerator)
        if uploader is not None:
            uploader.wait()  # the snapshots being uploaded lie in the working folder, which may be renamed now
        if folders.staging:
            swap_in(folders, locks)
            logger.info("replaced %s by the new run", folders.output_dir)
        if uploader is not None:
            uploader.moved_to(folders.output_dir)
            try:
                uploader.final(folders.output_dir, model_files(folders.output_dir))
            finally:  # all_results.json says how the uploads went, also when the final one failed
                results["hub"] = uploader.report()
                _write_results(os.path.join(folders.output_dir, "all_results.json"), results, config.hub_token)

    on_main(accelerator, finish)
    return results


def _recipe(config: TrainingConfig, accelerator) -> dict:
    """The recipe table of the model card."""
    recipe = {k: getattr(config, k) for k in ("clip_model", "dataset", "protocol", "epochs", "schedule_epochs",
                                               "batch_size", "lr", "gcn_lr", "weight_decay", "pct_start", "ema",
                                               "ema_keep_per_epoch", "loss", "loss_kwargs", "seed")}
    recipe["world_size"] = accelerator.num_processes
    recipe["mixed_precision"] = accelerator.mixed_precision
    return recipe


def _write_outputs(config: TrainingConfig, folder: str, best, test_metrics: dict, results: dict,
                   accelerator) -> None:
    """Model card and all_results.json (main process), each written atomically."""
    card = model_card(best.config, dataset=config.dataset, metrics=test_metrics, recipe=_recipe(config, accelerator),
                      repo_id=config.hub_model_id, base_model=None if config.model_name_or_path else config.clip_model,
                      license=config.license)
    with writing(os.path.join(folder, "README.md")):
        write_text(os.path.join(folder, "README.md"), card)
    _write_results(os.path.join(folder, "all_results.json"), results, config.hub_token)


def _write_results(path: str, results: dict, hub_token: str | None) -> None:
    """`all_results.json`, atomically, with every Hub token in effect masked (an upload error may quote one)."""
    from hspnet.redaction import redact

    with writing(path):
        write_text(path, redact(json.dumps(results, indent=2, ensure_ascii=False), hub_token) + "\n")


def push_folder_to_hub(folder: str, repo_id: str | None, token: str | None = None, private: bool = False) -> str:
    """Upload the model files of a trained folder (config, safetensors, remote code, image processor, model card;
    never checkpoints or logs) to `repo_id` in one commit. Returns the repo id."""
    repo_id = hub.push_folder_to_hub(folder, repo_id, token=token, private=private, files=(
        model_files(folder) if os.path.isdir(folder) else None), commit_message="End of training")
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return repo_id


def main(argv: list[str] | None = None, prog: str | None = "train.py") -> int:
    """`scripts/train.py` / `hspnet train`: one-line errors and exit status 1 on bad input (see `run_cli`)."""
    import sys

    from hspnet.cli_types import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_argument_parser(prog=prog)
    return run_cli(parser, lambda args: train(parse_training_args(argv, parser)), argv)
