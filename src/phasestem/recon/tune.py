"""Hyper-parameter search for reconstructions with Optuna (``phasestem tune PARAMS.yaml``).

Searched (each optional, ranges in the ``tune`` section of the parameter file): the defocus
``C10`` (Å; with ``C10_both_signs`` a range of magnitudes is searched with either sign, since a
flipped defocus sign is the commonest wrong setup), the slice thickness (Å) and per-parameter
learning rates. A trial that diverges is pruned. Each trial builds the
model from the dataset, runs ``tune.n_epochs`` epochs and returns the data error (the Gaussian
term of the last epoch, else the total loss). Intermediate errors are reported every epoch so
the median pruner can stop poor trials. The study lives in SQLite (default ``OUT/tune.db``);
running the command again adds trials to the same study. With the default storage the run holds ``OUT``
(:mod:`phasestem.base.lock`: a second ``tune`` into it is refused while the first runs); with ``tune.storage`` set
(e.g. a database server) several workers may share the study at once, as Optuna intends.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ..base.errors import ConfigError
from ..base.extras import require
from ..base.lock import hold_output
from .distributed import rank_device
from .engine import DivergenceError, optimize
from .params import ReconstructParams, build_dataset, build_model
from .schedule import ParamSchedule

log = logging.getLogger("phasestem.recon")


def run_tuning(params: ReconstructParams, out_dir: str | Path | None = None, n_trials: int | None = None):
    """Run (or resume) the study; returns the ``optuna.Study``."""
    optuna = require("optuna", "phasestem tune")

    t = params.tune
    if t is None:
        raise ConfigError("tune: the parameter file has no 'tune' section (ranges to search)")
    if t.C10 is None and t.slice_thickness is None and not t.learning_rates:
        raise ConfigError("tune: give at least one of tune.C10, tune.slice_thickness, tune.learning_rates")
    dataset = build_dataset(params)  # the data are checked before anything is created on disk
    out = Path(out_dir or params.run.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    # the study in OUT/tune.db is this run's: hold the folder; a study in a shared tune.storage is meant for
    # several workers at once (Optuna's parallel search), so nothing is held then
    with contextlib.nullcontext() if t.storage else hold_output(out, "phasestem tune"):
        out.mkdir(parents=True, exist_ok=True)
        storage = t.storage or f"sqlite:///{(out / 'tune.db').resolve()}"
        pruners = optuna.pruners
        pruner = pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if t.pruning else pruners.NopPruner()
        study = optuna.create_study(study_name=t.study_name, storage=storage, load_if_exists=True, direction="minimize",
                                    sampler=optuna.samplers.TPESampler(seed=t.seed), pruner=pruner)

        def objective(trial):
            p = params.model_copy(deep=True)
            ds = dataset
            if t.C10 is not None:
                c10 = trial.suggest_float("C10", t.C10.low, t.C10.high, log=t.C10.log)
                if t.C10_both_signs and t.C10.low >= 0:
                    c10 *= trial.suggest_categorical("C10_sign", [1, -1])
                p.optics.aberrations = {**p.optics.aberrations, "C10": c10}
                p.optics.aberrations.pop("defocus", None)
                ds = dataset._replace(aberrations={**dataset.aberrations, "C10": c10})  # the file's other keys kept
            if t.slice_thickness is not None:
                p.model.slice_thickness = trial.suggest_float("slice_thickness", t.slice_thickness.low,
                                                              t.slice_thickness.high, log=t.slice_thickness.log)
            for name, rng in t.learning_rates.items():
                lr = trial.suggest_float(f"lr_{name}", rng.low, rng.high, log=rng.log)
                old = p.model.learning_rates.get(name)
                p.model.learning_rates[name] = (old.model_copy(update={"lr": lr}) if isinstance(old, ParamSchedule)
                                                else ParamSchedule(lr=lr))
            model = build_model(p, ds).to(rank_device(p.run.device))
            quiet = p.run.model_copy(update={"progress": False})
            err = float("inf")
            try:
                for i, loss in enumerate(optimize(model, ds, t.n_epochs, quiet, p.losses, p.constraints)):
                    err = model.loss_history[-1].get("gaussian", loss)
                    trial.report(err, i)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            except DivergenceError as exc:  # a setting that diverges is a poor trial, not the end of the study
                log.warning("trial %d diverged: %s", trial.number, exc)
                raise optuna.TrialPruned() from None
            return err

        done = len([tr for tr in study.trials if tr.state.is_finished()])
        log.info("study %s in %s: %d trials stored, running %d more", t.study_name, storage, done,
                 n_trials or t.n_trials)
        study.optimize(objective, n_trials=n_trials or t.n_trials, catch=(FloatingPointError,))
    return study
