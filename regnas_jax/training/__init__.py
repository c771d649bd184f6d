"""Training: the resumable loop (:mod:`.loop`), the supernet's multi-subnet steps, phases and
schedules (:mod:`.supernet`) and exact-shape networks from scratch with optional focal
distillation (:mod:`.exact`).

``train(cfg, model, space, dataset, workdir)`` trains (or resumes) a supernet; TuNAS's job
drives the same :func:`run_loop` with its own alternating step.
"""

from regnas_jax.training import exact, loop, supernet
from regnas_jax.training.exact import (FocalDistillation, evaluate_exact, focal_distillation,
                                       train_exact)
from regnas_jax.training.loop import NonFiniteError, run_loop, step_key
from regnas_jax.training.supernet import (DISTILL, METHODS, OPTIMIZERS, SAMPLERS,
                                          SUBNET_LOOPS, LossConfig, Phase,
                                          TrainResult,
                                          TrainState, build_phases, fair_sample,
                                          make_optimizer, make_train_step, merge_batch_stats,
                                          optimizer_state,
                                          phase_at, resolve_subnet_loop, sample_subnets,
                                          subnet_grads, subnet_losses,
                                          switch_model, train)

__all__ = ["DISTILL", "FocalDistillation", "LossConfig", "evaluate_exact", "exact",
           "focal_distillation", "train_exact", "METHODS", "NonFiniteError", "OPTIMIZERS",
           "Phase", "SAMPLERS", "SUBNET_LOOPS", "TrainResult", "TrainState", "build_phases",
           "fair_sample", "loop", "make_optimizer", "make_train_step", "optimizer_state",
           "merge_batch_stats", "phase_at", "resolve_subnet_loop", "run_loop", "sample_subnets",
           "step_key", "subnet_grads", "subnet_losses", "supernet", "switch_model",
           "train"]
