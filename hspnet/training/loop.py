"""Training HSPNet with accelerate: :func:`train`, in the order of transformers'
`run_image_classification_no_trainer.py`.

`hspnet train` and `scripts/train.py` are thin command lines over :func:`train` (`hspnet.cli.train`). A run is a
:class:`TrainingRun` whose :meth:`~TrainingRun.run` reads top to bottom as named steps: the output folder and its log,
the checkpoint to resume, the data, the model (which owns its loss), the optimizer and schedule, the resume (or the
metrics of the untrained model), the Hub uploads, the epochs (train, evaluate and select, save the training state),
the test evaluation of the selected model, and saving and pushing it. The pieces live beside it in this package:
:mod:`~hspnet.training.arguments` (every option), :mod:`~hspnet.training.data_and_model`,
:mod:`~hspnet.training.optimization` and :mod:`~hspnet.training.ema` (the recipe), :mod:`~hspnet.training.run_folder`
(lock, staging folder, whole files), :mod:`~hspnet.training.run_log`, :mod:`~hspnet.training.resume` (settings
checks), :mod:`~hspnet.training.checkpoint` (the training state on disk) and :mod:`~hspnet.training.distributed`.

The loss is the model's: a step calls `model(pixel_values=..., labels=..., epoch=..., indices=...)` and steps on
`outputs.loss` (the model samples labels itself under `label_sample_size`, from a generator of its own that the
checkpoints keep).

What protects a run's results: the output folder is locked; a folder holding an earlier run is only replaced by a
complete new run; a resume with other result-changing settings or other data is refused, listing every difference; a
checkpoint is read without running code and every file of it is checked before anything is loaded; a NaN/inf loss or
gradient stops the run (:class:`TrainingDivergedError`) before that step is applied; every file appears whole;
uploads run in the background from snapshots, a failed one is retried with the next save and only a failed final
upload fails the run. The Hub token is never logged or saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from typing import Any

import torch

from hspnet.data.batches import collate, make_transform, use_verified_negatives
from hspnet.evaluation.loop import evaluate_model, selection_map
from hspnet.evaluation.openimages import has_verified_negatives, openimages_targets
from hspnet.evaluation.average_precision import average_precision_ranked
from hspnet.hub.cards import training_card
from hspnet.hub.transfer import TRAINING_ARGS_NAME, HubUploader, model_files
from hspnet.training.arguments import TrainingConfig
from hspnet.training.checkpoint import apply_checkpoint, read_checkpoint, save_checkpoint
from hspnet.training.data_and_model import (build_model, dataset_name, load_datasets, setup_loss_for_training,
                                            training_splits)
from hspnet.training.distributed import on_all, on_main
from hspnet.training.ema import ModelEMA, ema_decay, select_source
from hspnet.training.memory import release_freed_memory
from hspnet.training.optimization import loss_parameter_group, one_cycle_scheduler, parameter_groups
from hspnet.training.resume import (TrainingState, check_best_model, check_resume_settings, dataset_fingerprint,
                                    find_checkpoint, interruption_message, read_checkpoint_settings, run_settings,
                                    training_threads)
from hspnet.training.run_folder import (BEST_MARKER_NAME, OutputDirLock, checkpoint_dirs, clean_up_interrupted,
                                        describe_entry, kept_entries, moved_path, plan_folders, remove_leftovers,
                                        save_model_files, swap_in, writing)
from hspnet.training.run_log import close_log_handlers, print_and_log, scalar_config, setup_run_logging
from hspnet.training.streaming import skip_batches, train_loader
from hspnet.utils.errors import one_line
from hspnet.utils.files import read_json_file, write_json, write_text
from hspnet.utils.redaction import redact

logger = logging.getLogger("hspnet.train")


class TrainingDivergedError(ValueError):
    """The loss or its gradients became NaN or infinite; training stopped before applying that step."""


def train(config: TrainingConfig, argv: list[str] | None = None) -> dict:
    """Train, select, save and (optionally) upload an HSPNet model. Returns the results written to
    `output_dir/all_results.json`. Errors a user can cause are `OSError` / `ValueError` with a one-line message.

    Ctrl-C (`KeyboardInterrupt`, raised again) prints one line naming the last checkpoint and the command that resumes
    the run (:meth:`TrainingRun.interrupted`); `argv`, the options as given on the command line (without the program
    name), are repeated in it, else the options of `config` that differ from their defaults."""
    run, interrupted = None, False
    try:
        run = TrainingRun(config, argv)
        results = run.run()
        run.end()
        return results
    except KeyboardInterrupt:
        interrupted = True
        if run is not None:
            run.interrupted()
        else:  # stopped while the accelerator started
            print_and_log(logger, interruption_message(config, argv, folders=None, state=None, total_steps=0,
                                                       staging_removed=False, num_processes=1, mixed_precision="no"))
        raise
    finally:
        if run is not None:
            run.close(interrupted)


class TrainingRun:
    """One training run: its accelerator, folders, data, model, optimizer and progress, and the steps of
    :meth:`run`."""

    def __init__(self, config: TrainingConfig, argv: list[str] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        self.config, self.argv = config, argv
        self.accelerator = Accelerator(
            cpu=config.cpu or not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            log_with=config.report_to if config.with_tracking else None,
            project_dir=config.output_dir,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )
        self.locks: list[OutputDirLock] = []
        self.uploader: HubUploader | None = None
        self.last_checkpoint: str | None = None
        self.results: dict[str, Any] = {}
        # float sums depend on the thread count, which launchers set differently: the run fixes it (resume.py)
        self.threads_before = torch.get_num_threads()
        self.threads = training_threads(config, self.accelerator.device.type)
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    # ----- the run, top to bottom ------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.open_output_dir()
        self.find_checkpoint_to_resume()
        self.load_data()
        self.build_model_and_loaders()
        self.build_optimizer()
        self.resume_or_measure_untrained()
        self.start_hub_uploads()
        self.train_epochs()
        self.evaluate_selected_model()
        self.save_and_push()
        return self.results

    def end(self) -> None:
        """The end of a run, with every process still here: the DDP wrapper goes first (its reducer holds the process
        group), then the trackers and the process group. A gloo group torn down at interpreter exit, after a peer has
        gone, could hang its process forever in the group's destructor."""
        self.accelerator.wait_for_everyone()
        self.accelerator.free_memory()
        self.accelerator.end_training()

    def close(self, interrupted: bool) -> None:
        """Uploads in flight finish first (after a failure too: the last pushed state is what a resume elsewhere
        needs), unless the user interrupted; then the locks go (a next run may clean the snapshots)."""
        if self.uploader is not None:
            self.uploader.close(wait=not interrupted)
        for lock in reversed(self.locks):
            lock.release()
        close_log_handlers(logger)
        torch.set_num_threads(self.threads_before)

    def interrupted(self) -> None:
        """Ctrl-C, on the main process with the locks still held: `run_folder.clean_up_interrupted`, then ONE line on
        stderr and in train.log (`resume.interruption_message`): the last checkpoint and the command that resumes from
        it, or the command that starts over."""
        if not self.accelerator.is_main_process:
            return
        folders, removed = getattr(self, "folders", None), False
        try:
            removed = folders is not None and clean_up_interrupted(folders)
        except OSError as error:  # the line still names what is left
            logger.warning("could not clean up after the interruption: %s", one_line(error))
        print_and_log(logger, interruption_message(
            self.config, self.argv, folders=folders, state=getattr(self, "state", None),
            total_steps=getattr(self, "total_steps", 0), staging_removed=removed,
            num_processes=self.accelerator.num_processes, mixed_precision=str(self.accelerator.mixed_precision)))

    # ----- 1. the output folder and the log --------------------------------------------------------------------------

    def open_output_dir(self) -> None:
        """Lock `output_dir` (main process, before anything else), plan where the run writes (a staging folder for an
        `--overwrite_output_dir` run over an earlier one), clean a killed run's temporary files, and log into it."""
        config, accelerator = self.config, self.accelerator
        on_main(accelerator, lambda: self.locks.append(OutputDirLock(config.output_dir).acquire()))
        self.folders = folders = on_all(accelerator, lambda: plan_folders(config))
        self.working = working = folders.working

        def prepare_working_folder():
            if folders.staging and not config.resume_from_checkpoint and os.path.exists(working):
                shutil.rmtree(working)  # an interrupted earlier overwrite run: this one starts again
            if folders.staging:
                self.locks.append(OutputDirLock(working).acquire())
            remove_leftovers(working)

        on_main(accelerator, prepare_working_folder)
        accelerator.project_configuration.project_dir = working
        accelerator.project_configuration.logging_dir = working
        on_all(accelerator, lambda: setup_run_logging(logger, accelerator, working, config.hub_token))
        logger.info("processes: %d (distributed: %s), device: %s, mixed precision: %s, torch threads: %d%s",
                    accelerator.num_processes, accelerator.distributed_type, accelerator.device,
                    accelerator.mixed_precision, torch.get_num_threads(),
                    "" if self.threads is None else f" (fixed for training on the CPU; OMP_NUM_THREADS="
                    f"{os.environ.get('OMP_NUM_THREADS', '(not set)')} does not change it)")
        if folders.staging:
            kept = ", ".join(describe_entry(folders.output_dir, name) for name in kept_entries(folders.output_dir))
            logger.info("writing into %s; %s is replaced by it only when this run is complete%s", working,
                        folders.output_dir, f" (keeping what no training run writes: {kept})" if kept else "")

    # ----- 2. the checkpoint to resume -------------------------------------------------------------------------------

    def find_checkpoint_to_resume(self) -> None:
        """A resume must continue the checkpoint's run: the same settings (checked here, before any work) and the same
        data (checked in :meth:`load_data`)."""
        self.checkpoint = find_checkpoint(self.config, self.accelerator, self.working)
        self.saved_settings = read_checkpoint_settings(self.checkpoint) if self.checkpoint else None
        if self.checkpoint:
            check_resume_settings(self.checkpoint, self.saved_settings, run_settings(self.config, self.accelerator))

    # ----- 3. the data -----------------------------------------------------------------------------------------------

    def load_data(self) -> None:
        """The seed, then the training split (with row indices, for ROLE) and the selection and test splits."""
        from accelerate.utils import set_seed

        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)
        with accelerator.main_process_first():
            datasets, self.hierarchy = load_datasets(config)
        self.train_set, self.eval_sets, self.selection_split = training_splits(config, datasets)
        self.dataset_name = dataset_name(config, datasets)
        self.num_labels = len(self.hierarchy.labels)
        fingerprint = dataset_fingerprint(self.hierarchy, {"train": self.train_set, **self.eval_sets})
        self.settings = run_settings(config, accelerator, fingerprint)
        if self.checkpoint:
            for note in check_resume_settings(self.checkpoint, self.saved_settings, self.settings, fingerprint):
                logger.warning("resuming %s with another %s: results may differ in the last digits", self.checkpoint,
                               note)

    # ----- 4. the model, its loss and the loaders --------------------------------------------------------------------

    def build_model_and_loaders(self) -> None:
        """The model owns its loss: ROLE gets the number of training images and starts from the observed labels."""
        from torch.utils.data import DataLoader

        config = self.config
        self.model = build_model(config, self.hierarchy)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        if config.release_memory_between_chunks and self.accelerator.device.type == "cpu":
            base = self.model.base_model
            base.text_options = dataclasses.replace(base.text_options, before_recomputed_chunk=release_freed_memory)
        self.loss_module = setup_loss_for_training(self.model, self.train_set)
        if any(True for _ in self.loss_module.parameters()) and self.accelerator.num_processes > 1:
            raise ValueError(f"loss {config.loss!r} keeps per-image state; train it with a single process.")
        transform = make_transform(self.model.image_processor, self.num_labels,
                                   verified_negatives=use_verified_negatives(config, self.train_set))
        eval_batch = config.eval_batch_size or config.batch_size
        self.train_loader = train_loader(config, self.train_set, transform, self.accelerator)  # or a stream
        self.eval_loaders = {split: DataLoader(data.with_transform(transform), batch_size=eval_batch,
                                               collate_fn=collate, num_workers=config.num_workers)
                             for split, data in self.eval_sets.items()}
        self.verified = {split: openimages_targets(data, self.num_labels)  # Open Images: verified pairs only
                         for split, data in self.eval_sets.items() if has_verified_negatives(data)}

    # ----- 5. optimizer, schedule, EMA -------------------------------------------------------------------------------

    def build_optimizer(self) -> None:
        """Adam (the loss's own parameters at `loss_lr_scale` x lr), `accelerator.prepare`, the one-cycle schedule,
        the EMA, the progress and the label-sampling generator."""
        config, accelerator = self.config, self.accelerator
        groups = (parameter_groups(self.model, config.lr, config.gcn_lr, config.weight_decay)
                  + loss_parameter_group(self.loss_module, config.lr, config.loss_lr_scale))
        self.optimizer = torch.optim.Adam(groups, lr=config.lr)
        self.trained_parameters = [p for group in groups for p in group["params"]]
        self.model, self.optimizer, self.train_loader, *prepared = accelerator.prepare(
            self.model, self.optimizer, self.train_loader, *self.eval_loaders.values())
        self.eval_loaders = dict(zip(self.eval_loaders, prepared))
        self.unwrapped = accelerator.unwrap_model(self.model)
        # `forward` shares the parameters of `model`
        self.forward = (torch.compile(self.model, backend=config.torch_compile_backend or "inductor",
                                      mode=config.torch_compile_mode) if config.torch_compile else self.model)
        self.loss_module.to(accelerator.device)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = one_cycle_scheduler(self.optimizer, self.steps_per_epoch, config.schedule_epochs,
                                             config.pct_start)
        self.ema = (ModelEMA(self.unwrapped, ema_decay(self.steps_per_epoch, config.ema_keep_per_epoch))
                    if config.ema else None)
        self.state = TrainingState(run_id=uuid.uuid4().hex)
        # label sampling draws from a generator of its own, seeded here and kept in the checkpoints (nothing else that
        # draws random numbers, such as a new DataLoader iterator on resume, changes the samples)
        self.label_generator = (torch.Generator().manual_seed(config.seed) if config.label_sample_size is not None
                                else None)
        self.unwrapped.label_generator = self.label_generator
        if config.with_tracking:
            on_all(accelerator, lambda: accelerator.init_trackers("runs", config=scalar_config(config)))
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_train_steps:
            self.total_steps = min(self.total_steps, config.max_train_steps)
        logger.info("train images: %d, steps per epoch: %d (per process batch %d x %d processes), total steps: %d, "
                    "schedule: %d epochs", len(self.train_set), self.steps_per_epoch, config.batch_size,
                    accelerator.num_processes, self.total_steps, config.schedule_epochs)

    def checkpointed_state(self) -> dict:
        """What a checkpoint holds besides the weights, the optimizer and the random states."""
        return dict(state=self.state, scheduler=self.scheduler, loss_module=self.loss_module, ema=self.ema,
                    label_generator=self.label_generator, train_loader=self.train_loader)

    # ----- 6. resume, or measure the untrained model -----------------------------------------------------------------

    def resume_or_measure_untrained(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.results.update(selection_split=self.selection_split, protocol=config.protocol,
                            world_size=accelerator.num_processes)
        if self.checkpoint:
            # every file checked (pickles read without code execution) before anything is loaded
            contents = read_checkpoint(self.checkpoint, num_processes=accelerator.num_processes,
                                       process_index=accelerator.process_index, ema=self.ema is not None,
                                       label_sampling=self.label_generator is not None,
                                       scaler=accelerator.scaler is not None)
            try:
                accelerator.load_state(self.checkpoint)  # the weights and the optimizer, from the files checked above
            except Exception as error:  # noqa: BLE001 - a checkpoint that passed the file checks but does not load
                raise ValueError(f"checkpoint {self.checkpoint}: cannot be loaded ({one_line(error)})") from None
            apply_checkpoint(contents, **self.checkpointed_state())
            check_best_model(self.working, self.state, self.checkpoint)
            logger.info("resumed from %s at step %d (epoch %d)", self.checkpoint, self.state.global_step,
                        self.state.global_step // self.steps_per_epoch)
            if self.state.test_before_training:
                self.results["test_before_training"] = self.state.test_before_training
        elif config.evaluate_before_training:
            before, _ = evaluate_model(self.model, self.eval_loaders["test"], accelerator, self.num_labels,
                                       "test (untrained)", verified_targets=self.verified.get("test"))
            self.results["test_before_training"] = self.state.test_before_training = before
            logger.info("before training: test mAP %.2f", before["mAP"])
        self.last_checkpoint = self.checkpoint

    # ----- 7. the Hub: only the main process uploads, in the background, from snapshots ------------------------------

    def start_hub_uploads(self) -> None:
        config = self.config
        if config.push_to_hub and self.accelerator.is_main_process:
            self.uploader = HubUploader(config.hub_model_id, folder=self.working, strategy=config.hub_strategy,
                                        token=config.hub_token, private=config.hub_private_repo, log=logger,
                                        keep_checkpoints=config.checkpoints_total_limit or None)
            logger.info("pushing to the Hub repository %s (hub_strategy %s)", config.hub_model_id,
                        config.hub_strategy)
        elif not config.push_to_hub and config.hub_strategy != "end":
            logger.warning("hub_strategy %s has no effect without --push_to_hub true", config.hub_strategy)

    def push_progress(self, checkpoint_folder: str | None) -> None:
        """Queue an upload of the current state (main process); a failure here is logged, never raised."""
        config, state = self.config, self.state
        if self.uploader is None or config.hub_strategy == "end":
            return
        try:
            marker = None
            if state.best_epoch >= 0:
                marker = read_json_file(os.path.join(self.working, BEST_MARKER_NAME), "best-model marker")
            names = [n for n in model_files(self.working) if n != "README.md"] if marker is not None else []
            card = self.card(self.unwrapped.config, progress={
                "epoch": state.epoch, "epochs": config.epochs, "step": state.global_step,
                "total_steps": self.total_steps, "best_metric": state.best_metric, "best_epoch": state.best_epoch,
                "selection_split": self.selection_split})
            self.uploader.save(step=state.global_step, epoch=state.epoch, model_folder=self.working,
                               model_file_names=names, card=card, checkpoint=checkpoint_folder,
                               checkpoint_info={"run_id": state.run_id, "best_model": marker})
        except Exception as error:  # noqa: BLE001 - the upload is a copy; training goes on without it
            logger.warning("could not queue the upload of step %d to the Hub: %s", state.global_step,
                           redact(one_line(error), config.hub_token))

    # ----- 8. the epochs ---------------------------------------------------------------------------------------------

    def train_epochs(self) -> None:
        """Train an epoch, evaluate the regular and the EMA model, keep the better one if it improved, save the
        training state; stop at `max_train_steps` or after `patience` evaluations without improvement."""
        from tqdm.auto import tqdm

        config, state = self.config, self.state
        self.progress = tqdm(total=self.total_steps, initial=min(state.global_step, self.total_steps), desc="train",
                             disable=not self.accelerator.is_local_main_process)
        start = time.time()
        try:  # the bar is closed on errors too, so that the one-line error starts on its own line
            self.model.train()
            for epoch in range(state.global_step // self.steps_per_epoch, config.epochs):
                if state.global_step >= self.total_steps:
                    break
                state.epoch = epoch
                self.train_epoch(epoch)
                self.evaluate_and_select(epoch)
                if config.checkpointing_steps is not None:
                    self.save_training_state(f"epoch_{epoch}-step_{state.global_step}")
                elif self.uploader is not None:  # no training states saved: every_save pushes after each evaluation
                    self.push_progress(None)
                if config.patience is not None and state.evaluations_without_improvement >= config.patience:
                    logger.info("early stopping: no improvement for %d evaluations", config.patience)
                    break
        finally:
            self.progress.close()
        self.accelerator.wait_for_everyone()
        self.results["train_seconds"] = round(time.time() - start, 2)
        self.results["resumed_from"] = self.checkpoint
        self.results["best"] = {"epoch": state.best_epoch, "source": state.best_source,
                                f"{self.selection_split}_mAP": state.best_metric,
                                f"{self.selection_split}_metrics": state.best_metrics}
        self.results["history"] = state.history

    def train_epoch(self, epoch: int) -> None:
        """The optimizer steps of one epoch (from the resumed step, mid-epoch), with a training state saved every
        `checkpointing_steps`."""
        config, state, accelerator = self.config, self.state, self.accelerator
        self.train_loader.set_epoch(epoch)
        skip = state.global_step - epoch * self.steps_per_epoch
        loader = skip_batches(accelerator, self.train_loader, skip)  # a stream skips before decoding
        running, count = 0.0, 0
        for batch in loader:
            loss = self.training_step(batch, epoch)
            running += loss
            count += 1
            if state.global_step % config.logging_steps == 0:
                lrs = self.scheduler.get_last_lr()
                self.progress.set_postfix(loss=f"{running / count:.3f}", lr=f"{lrs[0]:.2e}")
                if config.with_tracking:
                    accelerator.log({"train/loss": running / count, "train/lr": lrs[0], "train/gcn_lr": lrs[-1],
                                     "train/epoch": epoch}, step=state.global_step)
            end_of_epoch = state.global_step % self.steps_per_epoch == 0
            if (str(config.checkpointing_steps).isdigit() and not end_of_epoch
                    and state.global_step % int(config.checkpointing_steps) == 0):
                self.save_training_state(f"step_{state.global_step}")
            if state.global_step >= self.total_steps:
                if state.global_step % self.steps_per_epoch != 0:
                    logger.info("stopping mid-epoch at max_train_steps=%d", self.total_steps)
                break

    def training_step(self, batch: dict, epoch: int) -> float:
        """One optimizer step on the model's loss over the observed labels (with `label_sample_size`: on a sample of
        the labels); a NaN/inf loss or gradient stops the run before the step is applied. Returns this process's
        loss."""
        accelerator, state = self.accelerator, self.state
        targets = batch.get("observed_targets", batch["observed_labels"])  # -1: verified negatives (an option)
        loss = self.forward(pixel_values=batch["pixel_values"], labels=targets, epoch=epoch,
                            indices=batch["index"]).loss
        value = loss.detach().float().reshape(1)
        values = (accelerator.gather(value) if accelerator.num_processes > 1 else value).tolist()
        bad = next(((rank, v) for rank, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise self.diverged(epoch, f"the loss is {bad[1]}" + (f" on process {bad[0]}" if len(values) > 1 else ""))
        accelerator.backward(loss)
        if accelerator.scaler is None:  # fp16's scaler skips steps with inf gradients by design
            grads = [p.grad for p in self.trained_parameters if p.grad is not None]
            if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
                raise self.diverged(epoch, "the gradients are not finite (NaN or inf)")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        state.global_step += 1
        self.progress.update(1)
        return values[accelerator.process_index if len(values) > 1 else 0]

    def diverged(self, epoch: int, what: str) -> TrainingDivergedError:
        state, folders = self.state, self.folders
        step = state.global_step + 1
        if state.best_epoch >= 0:
            kept = (f"the best model so far (epoch {state.best_epoch}, {self.selection_split} mAP "
                    f"{state.best_metric:.2f}) is kept in {folders.working}")
        else:
            kept = "no model was saved yet"
        if folders.staging:
            kept += f"; {folders.output_dir} is unchanged"
        checkpoint = f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""
        return TrainingDivergedError(
            f"training diverged at global step {step} (epoch {epoch}, batch {step - epoch * self.steps_per_epoch} of "
            f"{self.steps_per_epoch}): {what}; this step was not applied, {kept}{checkpoint}. Lower --lr / --gcn_lr "
            "(or use --mixed_precision no) and start a new run."
        )

    def evaluate_and_select(self, epoch: int) -> None:
        """Evaluate the regular and the EMA model on the selection split; save the better one if it improved."""
        config, state = self.config, self.state
        candidates = [("regular", self.forward)] + ([("ema", self.ema.module)] if self.ema is not None else [])
        scores = {}
        for source, candidate in candidates:
            metrics, _ = evaluate_model(candidate, self.eval_loaders[self.selection_split], self.accelerator,
                                        self.num_labels, f"{self.selection_split} ({source})",
                                        verified_targets=self.verified.get(self.selection_split))
            scores[source] = metrics
            if config.with_tracking:
                self.accelerator.log({f"{self.selection_split}_{source}/{k}": v for k, v in metrics.items()},
                                     step=state.global_step)
        source = select_source(scores)
        current = selection_map(scores[source])
        state.history.append({"epoch": epoch, "step": state.global_step,
                              **{f"{s}_mAP": m["mAP"] for s, m in scores.items()}})
        improved = current > state.best_metric
        if improved:
            self.save_best(self.unwrapped if source == "regular" else self.ema.module, epoch, source)
            state.best_metric, state.best_epoch, state.best_source = current, epoch, source
            state.best_metrics = scores[source]
            state.evaluations_without_improvement = 0
        else:
            state.evaluations_without_improvement += 1
        logger.info(
            "epoch %d: %s mAP regular %.2f%s -> best %.2f (epoch %d, %s)%s", epoch, self.selection_split,
            scores["regular"]["mAP"], f", EMA {scores['ema']['mAP']:.2f}" if "ema" in scores else "",
            state.best_metric, state.best_epoch, state.best_source, " [saved]" if improved else "",
        )

    def save_best(self, source_model, epoch: int, source: str) -> None:
        """The model files, the run's options beside them and the marker naming this run and step (main process)."""
        working, state = self.working, self.state

        def save():
            save_model_files(source_model, working, save_function=self.accelerator.save)
            with writing(os.path.join(working, TRAINING_ARGS_NAME)):
                write_json(os.path.join(working, TRAINING_ARGS_NAME), self.settings)
            marker = os.path.join(working, BEST_MARKER_NAME)
            with writing(marker):
                write_json(marker, {"run_id": state.run_id, "epoch": epoch, "step": state.global_step,
                                    "source": source})

        on_main(self.accelerator, save)

    def save_training_state(self, name: str) -> None:
        """A checkpoint, written under a temporary name with the run's settings and renamed when complete: a run killed
        while saving never leaves a half-written checkpoint that `--resume_from_checkpoint latest` would pick."""
        config, accelerator = self.config, self.accelerator
        folder = os.path.join(self.working, "checkpoints", name)

        def save():
            with writing(folder + ".partial", "the checkpoint"):
                save_checkpoint(accelerator, folder + ".partial", **self.checkpointed_state())

        on_all(accelerator, save)

        def publish():
            with writing(os.path.join(folder + ".partial", TRAINING_ARGS_NAME)):
                write_json(os.path.join(folder + ".partial", TRAINING_ARGS_NAME), self.settings)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(folder + ".partial", folder)
            if config.checkpoints_total_limit:
                for _, old in checkpoint_dirs(self.working)[: -config.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            self.push_progress(folder)

        on_main(accelerator, publish)
        self.last_checkpoint = folder

    # ----- 9. the selected model on the test set ---------------------------------------------------------------------

    def evaluate_selected_model(self) -> None:
        from hspnet.models.hspnet.modeling_hspnet import HSPNetForImageClassification

        accelerator, state = self.accelerator, self.state
        self.best = on_all(accelerator, lambda: HSPNetForImageClassification.from_pretrained(self.working))
        self.best.to(accelerator.device)
        test_metrics, accumulator = evaluate_model(self.best, self.eval_loaders["test"], accelerator, self.num_labels,
                                                   "test (best)", verified_targets=self.verified.get("test"))
        self.results["test"] = test_metrics
        if accumulator.num_samples:
            per_class = average_precision_ranked(accumulator.scores, accumulator.targets)
            self.results["test_per_class_AP"] = {name: round(100 * float(ap), 4) for name, ap in
                                                 zip(self.hierarchy.labels, per_class)}
        logger.info("best model (%s, epoch %d): test mAP %.2f (selected on %s)", state.best_source, state.best_epoch,
                    test_metrics["mAP"], self.selection_split)
        if "test_before_training" in self.results:
            logger.info("test mAP before training %.2f -> after %.2f", self.results["test_before_training"]["mAP"],
                        test_metrics["mAP"])
        if self.config.with_tracking:
            accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)

    # ----- 10. save (model card, all_results.json; the staging folder swapped in) and push the final model ------------

    def save_and_push(self) -> None:
        folders, uploader = self.folders, self.uploader

        def finish():
            if uploader is not None:
                self.results["hub"] = uploader.report()
            card = self.card(self.best.config, metrics=self.results["test"])
            with writing(os.path.join(self.working, "README.md")):
                write_text(os.path.join(self.working, "README.md"), card)
            self.write_results(self.working)
            if uploader is not None:
                uploader.wait()  # the snapshots being uploaded lie in the working folder, which may be renamed now
            if folders.staging:
                try:
                    swap_in(folders, self.locks)
                finally:  # a Ctrl-C during the swap is raised after it: the paths the interruption names move too
                    if not os.path.isdir(folders.working) and os.path.isdir(folders.output_dir):
                        self.moved_in(folders)
                logger.info("replaced %s by the new run", folders.output_dir)
            if uploader is not None:
                uploader.moved_to(folders.output_dir)
                try:
                    uploader.final(folders.output_dir, model_files(folders.output_dir))
                finally:  # all_results.json says how the uploads went, also when the final one failed
                    self.results["hub"] = uploader.report()
                    self.write_results(folders.output_dir)

        on_main(self.accelerator, finish)

    def moved_in(self, folders) -> None:
        """The staging folder became `output_dir`: the run's paths follow it."""
        self.last_checkpoint = moved_path(self.last_checkpoint, folders)
        self.working, self.folders = folders.output_dir, dataclasses.replace(folders, working=folders.output_dir)

    def write_results(self, folder: str) -> None:
        """`all_results.json`, atomically, with every Hub token in effect masked (an upload error may quote one)."""
        path = os.path.join(folder, "all_results.json")
        with writing(path):
            write_text(path, redact(json.dumps(self.results, indent=2, ensure_ascii=False),
                                    self.config.hub_token) + "\n")

    def card(self, model_config, metrics: dict | None = None, progress: dict | None = None) -> str:
        """The model card: final (the test `metrics`) or "in progress" (`progress`); see `hub.cards.training_card`."""
        return training_card(model_config, self.config, metrics=metrics, progress=progress,
                             world_size=self.accelerator.num_processes,
                             mixed_precision=self.accelerator.mixed_precision, dataset_name=self.dataset_name,
                             model_name=os.path.basename(self.folders.output_dir))

