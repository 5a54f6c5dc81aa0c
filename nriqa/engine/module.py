"""The Lightning module: DEIQT's training step, the methods' extra losses, distributed evaluation."""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import numpy as np
import torch
from torch import nn

from nriqa.config import RunConfig
from nriqa.engine.diagnostics import diagnostic_groups, gradient_logs, total_grad_norm
from nriqa.engine.schedule import adamw, lr_at
from nriqa.errors import MetricError
from nriqa.methods import EngineHooks, StepContext, build_methods
from nriqa.metrics import evaluate
from nriqa.models import DEIQT

log = logging.getLogger(__name__)
#: The stage that selects the epoch is logged as ``select/*`` (under the paper protocol the
#: selection part is the test part: ``val/*`` would hide that).
SELECT = "select"


class IQAModule(L.LightningModule):
    def __init__(self, cfg: RunConfig, model: DEIQT | None = None, steps_per_epoch: int = 1,
                 context: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else DEIQT.from_config(cfg.model)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.methods = nn.ModuleList(build_methods(cfg, self.model, context))
        self.loss_fn = nn.SmoothL1Loss(beta=cfg.optim.loss_beta)
        self._eval: dict[str, list[torch.Tensor]] = {}
        self._compute = {"forward_crops": 0, "backward_crops": 0, "val_forward_crops": 0}
        self.last_eval: dict[str, dict] = {}

    @property
    def crops_per_image(self) -> int:
        return max([1, *(m.crops_per_image for m in self.methods)])

    @property
    def needs_full_image(self) -> bool:
        return any(m.needs_full_image for m in self.methods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---------------------------------------------------------------- training
    def on_train_start(self) -> None:
        # The true count (world size, limit_train_batches) is known only now; the schedule's
        # lambda reads it lazily, so steps after the first use it.
        self.steps_per_epoch = max(int(self.trainer.num_training_batches), 1)

    def on_fit_start(self) -> None:
        self._exclude_unsynced_from_ddp()
        hooks = self.engine_hooks()
        for method in self.methods:
            method.on_fit_start(hooks)

    def engine_hooks(self) -> EngineHooks:
        """What the methods get from the engine: the student, its device, the compute count and
        the trainer's precision context."""
        return EngineHooks(model=self.model, device=self.device, count=self.count_compute,
                           forward_context=self.forward_context)

    def forward_context(self):
        """The trainer's precision context (autocast under mixed precision); none without one."""
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None \
            else contextlib.nullcontext()

    def _exclude_unsynced_from_ddp(self) -> None:
        """DDP broadcasts every buffer from rank 0 before each forward; the buffers of what the
        methods keep identical on all ranks themselves (:meth:`Method.unsynced_modules`) are
        taken out of that list."""
        trainer = self._trainer
        wrapped = getattr(trainer.strategy, "model", None) if trainer is not None else None
        unsynced = {id(m) for method in self.methods for m in method.unsynced_modules()}
        if not unsynced or not isinstance(wrapped, nn.parallel.DistributedDataParallel):
            return
        names = {f"{prefix}.{name}" for prefix, sub in wrapped.module.named_modules()
                 if id(sub) in unsynced for name, _ in sub.named_buffers(recurse=False)}
        wrapped.parameters_to_ignore.update(names)

    def step_loss(self, batch: dict) -> tuple[torch.Tensor, dict, StepContext]:
        """The training loss of one batch: DEIQT's regression plus each method's extra loss.

        Returns the loss, the values to log and the step's context (whose ``terms`` name every
        loss term, for the gradient diagnostics)."""
        crops = batch["image"]
        b, k = crops.shape[:2]
        images = crops.flatten(0, 1)
        labels = batch["label"].float().repeat_interleave(k)
        c, tokens = self.model.features(images)
        out = self.model.head(c, tokens)
        ctx = StepContext(batch=batch, images=images, labels=labels,
                          groups=batch["group"].repeat_interleave(k), crops_per_image=k, c=c,
                          tokens=tokens, out=out, model=self.model, step=self.global_step,
                          epoch_float=self.global_step / self.steps_per_epoch,
                          count=self.count_compute, forward_context=self.forward_context)
        loss = ctx.add_term("regression", self.loss_fn(out.score.float(), labels))
        logs = {"train/loss_reg": loss.detach()}
        for method in self.methods:
            extra, method_logs = method.extra_loss(ctx)
            if extra is not None:
                loss = loss + extra
            logs.update({f"train/{key}": value for key, value in method_logs.items()})
        logs["train/loss"] = loss.detach()
        return loss, logs, ctx

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs, ctx = self.step_loss(batch)
        n = ctx.images.shape[0]
        self.count_compute(forward_crops=n, backward_crops=n)
        every = self.cfg.diagnostics.grad_every
        if every and ctx.step % every == 0:
            self._log_gradients(ctx)
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=n, sync_dist=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                 batch_size=ctx.batch["image"].shape[0])
        return loss

    def _log_gradients(self, ctx: StepContext) -> None:
        """Each loss term's gradient norms and cosines (``nriqa.engine.diagnostics``), written
        straight to the loggers as one row of this step: through ``self.log`` the values of the
        steps in between would repeat the last diagnosed step's."""
        groups = diagnostic_groups(self.model, self.methods)
        metrics = {f"train/{k}": v for k, v in gradient_logs(ctx.terms, groups).items()}
        metrics["epoch"] = self.current_epoch
        for logger in self.loggers:
            logger.log_metrics(metrics, step=ctx.step)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this with unscaled, not yet clipped gradients.
        if not self.cfg.diagnostics.grad_every:
            return
        norm = total_grad_norm(p for g in optimizer.param_groups for p in g["params"])
        clip = self.cfg.optim.grad_clip
        self.log_dict({"train/grad/total_norm": norm,
                       "train/grad/clipped": float(clip is not None and norm > clip)},
                      on_step=True, on_epoch=True, batch_size=1, sync_dist=False)

    # ---------------------------------------------------------------- compute count
    def count_compute(self, forward_crops: int = 0, backward_crops: int = 0) -> None:
        """Count training passes through the backbone, in crops (whole images at the input size
        count as crops): the student's, and what the methods add (teachers, saliency, warm fill)."""
        self._compute["forward_crops"] += int(forward_crops)
        self._compute["backward_crops"] += int(backward_crops)

    def compute_counts(self) -> dict[str, int]:
        """This run's counts summed over ranks (a collective under DDP: call it on every rank)."""
        counts = dict(self._compute)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            t = torch.tensor(list(counts.values()), dtype=torch.float64, device=self.device)
            t = trainer.strategy.reduce(t, reduce_op="sum")
            counts = {k: int(v) for k, v in zip(counts, t.tolist())}
        return counts

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for method in self.methods:
            method.after_optimizer_step(self.model)

    def configure_optimizers(self):
        o = self.cfg.optim
        named = list(self.model.named_parameters())
        for method in self.methods:
            named += [(f"{method.name}.{n}", p) for n, p in method.trainable_parameters()]
        opt = adamw(named, o)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_at(step, self.steps_per_epoch, o) / o.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nriqa_meta"] = getattr(self, "meta", None)
        checkpoint["nriqa_compute"] = dict(self._compute)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._compute.update(checkpoint.get("nriqa_compute", {}))

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, stage: str, batch: dict) -> None:
        scores = self.model.score_crops(batch["image"]).float()
        if stage == "val":
            self._compute["val_forward_crops"] += batch["image"].shape[0] * batch["image"].shape[1]
        store = self._eval.setdefault(stage, [])
        store.append(torch.stack([batch["index"].float(), scores, batch["label"].float()], 1))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def gather_predictions(self, stage: str) -> np.ndarray:
        """``(n_images, 3)`` rows of (table index, score, label), each image once, sorted."""
        rows = self._eval.pop(stage, [])
        local = torch.cat(rows) if rows else torch.zeros(0, 3, device=self.device)
        gathered = self.all_gather(local) if self.trainer.world_size > 1 else local
        arr = gathered.reshape(-1, 3).cpu().numpy().astype(np.float64)
        _, first = np.unique(arr[:, 0], return_index=True)  # drop the padding duplicates
        return arr[first]

    def _eval_epoch_end(self, stage: str) -> None:
        arr = self.gather_predictions(stage)
        if self.trainer.sanity_checking or len(arr) < 3:
            return
        try:
            # Selection always uses plain PLCC; the logistic-fitted values are added beside it.
            metrics = evaluate(arr[:, 1], arr[:, 2])
        except MetricError as err:  # e.g. a collapsed model predicting a constant
            log.warning("%s metrics undefined at epoch %d: %s", stage, self.current_epoch, err)
            metrics = {"srcc": -1.0, "plcc": -1.0, "krcc": -1.0, "rmse": float("inf"), "n": len(arr)}
        else:
            if self.cfg.protocol.fit != "none":
                try:
                    metrics |= evaluate(arr[:, 1], arr[:, 2], fit=self.cfg.protocol.fit)
                except MetricError as err:
                    log.warning("%s logistic fit failed at epoch %d: %s", stage, self.current_epoch, err)
        self.last_eval[stage] = {"metrics": metrics, "predictions": arr}
        prefix = SELECT if stage == "val" else stage
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in metrics.items() if k != "n"},
                      rank_zero_only=False, sync_dist=False)
