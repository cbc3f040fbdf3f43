"""A PtyRAD 1.0 params file (sections ``init_params``, ``model_params``, ``loss_params``, ``constraint_params``,
``recon_params``, ``hypertune_params``) translated into the mapping of ``phasestem reconstruct``'s parameter file.

What has a phasestem meaning is translated with its units converted (kV → eV; aberration azimuths degrees → rad;
``defocus`` → ``C10 = −defocus``; PtyRAD's ``meas_calibration`` of the raw pattern → ``optics.angular_sampling``
(mrad per detector pixel); positions' learning rate px → Å; ``obj_zblur`` layers → Å; ``tilt_smooth`` scan
positions → Å; ``probe_mask_k`` fraction of kMax → mrad; ``pos_scan_affine`` and ``pos_scan_flipT`` → ``scan.rotation``,
``scan.step``, ``scan.affine``: :mod:`.ptyrad_scan`). A setting the file leaves out takes PtyRAD's default where
it changes what runs (the learning rates of ``update_params``; the constraints PtyRAD applies by default:
``ortho_pmode``, ``obj_rblur``, ``obj_zblur``, ``fix_probe_int``, ``pos_recenter``). Everything else is listed,
one line each: ``untranslated`` (a setting that changes the run and has no phasestem counterpart here),
``approximate`` (translated, with a difference stated), ``ignored`` (off, null, or PtyRAD's own output naming).
An untranslated setting that changes the geometry stops the translation with one line naming it, unless
``allow_untranslated`` (``phasestem convert ptyrad --allow-untranslated``). Mapping tables: docs/coming_from.md.
Nothing of PtyRAD is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .ptyrad_experiment import ExperimentSections
from .ptyrad_reader import SECTIONS, Translation, is_ptyrad_params, short_value

__all__ = ["SECTIONS", "Translation", "is_ptyrad_params", "translate", "translation_yaml"]

#: PtyRAD's update_params defaults (start_iter, lr): what runs when the file leaves one out
UPDATE_DEFAULTS = {"obja": (1, 5e-4), "objp": (1, 5e-4), "obj_tilts": (None, 0.0), "slice_thickness": (None, 0.0),
                   "probe": (1, 1e-4), "probe_pos_shifts": (1, 5e-4)}
#: PtyRAD parameter → phasestem learning-rate name
RATE_NAMES = {"obja": "obj_amplitude", "objp": "obj_phase", "obj_tilts": "tilt", "slice_thickness": "slice_thickness",
              "probe": "probe", "probe_pos_shifts": "positions"}
#: constraints PtyRAD runs when the file does not name them (start_iter 1), with their default widths
CONSTRAINT_DEFAULTS = {"ortho_pmode": {"start_iter": 1}, "fix_probe_int": {"start_iter": 1},
                       "obj_rblur": {"start_iter": 1, "std": 0.4, "obj_type": "both"},
                       "obj_zblur": {"start_iter": 1, "std": 1.0, "obj_type": "both"},
                       "pos_recenter": {"start_iter": 1}}
#: recon_params keys that only name and fill PtyRAD's own output folder
OUTPUT_KEYS = ("recon_dir_affixes", "prefix_time", "prefix", "postfix", "save_result", "result_modes",
               "selected_figs", "copy_params", "convergence_monitor")
#: PtyRAD optimizer name → run.optimizer
OPTIMIZERS = {"Adam": "adam", "SGD": "sgd", "LBFGS": "lbfgs"}


class _Translator(ExperimentSections):
    def run(self) -> Translation:
        self.optics()
        self.detector()
        self.scan()
        self.data()
        self.model()
        self.rates()
        self.losses()
        self.constraints()
        self.run_settings()
        self.hypertune()
        for section, values in self.sections.items():
            for key in values:
                if (section, key) not in self.used:
                    self.skip(section, key, "no phasestem counterpart (not a PtyRAD 1.0 key phasestem knows)")
        self.out = {k: v for k, v in self.out.items() if v or k in ("data", "optics", "scan")}
        self.tr.params = self.out
        return self.tr

    def model(self) -> None:
        m = self.out["model"]
        n = self.get("init_params", "obj_Nlayer")
        dz = self.get("init_params", "obj_slice_thickness")
        self.dz = None if dz is None else float(dz)
        if n is not None:
            m["n_slices"] = int(n)
        if dz is not None:
            m["slice_thickness"] = self.dz
        pm = self.get("init_params", "probe_pmode_max")
        if pm is not None:
            m["n_probe_modes"] = int(pm)
        pows = self.get("init_params", "probe_pmode_init_pows")
        if pows is not None:
            if len(pows) == 1:
                m["mode_power"] = float(pows[0])
            else:
                self.skip("init_params", "probe_pmode_init_pows", "phasestem starts every higher mode at one power "
                          "(model.mode_power)")
        om = self.get("init_params", "obj_omode_max")
        if om is not None:
            m["n_object_modes"] = int(om)
        occu = self.get("init_params", "obj_omode_init_occu")
        if isinstance(occu, dict) and occu.get("occu_type", "uniform") != "uniform":
            self.skip("init_params", "obj_omode_init_occu", "phasestem starts the object modes uniform")
        blur = self.get("model_params", "detector_blur_std")
        if blur:
            m["detector_blur"] = float(blur)
        pre = self.get("model_params", "obj_preblur_std")
        if pre:
            m["obj_preblur"] = float(pre)
        tsrc = self.get("init_params", "tilt_source", "simu")
        tilts = self.get("init_params", "tilt_params")
        if tsrc != "simu":
            self.skip("init_params", "tilt_params", "tilts from a file or reconstruction are not read; give "
                      "model.tilt (mrad)")
        elif isinstance(tilts, dict):
            init = tilts.get("init_tilts") or [[0, 0]]
            if tilts.get("tilt_type", "all") == "each":
                m["per_position_tilt"] = True
            if all(list(t) == list(init[0]) for t in init):
                if any(init[0]):
                    m["tilt"] = [float(init[0][0]), float(init[0][1])]
            else:
                self.tr.untranslated.append("init_params.tilt_params.init_tilts: different start tilts per position: "
                                            "phasestem starts every position at model.tilt")
        for key in ("probe", "obj"):
            src = self.get("init_params", f"{key}_source", "simu")
            if src != "simu":
                what = ("model.initial_probe: {file, key}" if key == "probe"
                        else "model.initial_phase: {file, key, sampling}")
                self.skip("init_params", f"{key}_params", f"{key} from {src}: give {what}")
            else:
                self.get("init_params", f"{key}_params")
        for key in ("obj_z_crop", "obj_z_pad", "obj_z_resample"):
            self.skip("init_params", key, "reshapes a loaded object in depth; not translated")
        for key in ("simu_Npix", "simu_match_mode"):
            self.skip("init_params", key, "a simulated window larger than the data: phasestem's Python API "
                      "(Ptychography.from_dataset(oversampling=…)), not the parameter file")

    def pixel(self) -> float | None:
        """PtyRAD's dx (Å): λ / (N · Δα) of its final probe window (after crop and pad), None when not calibrated."""
        return None if self.da is None else self.wavelength * 1e3 / (self.dx_npix * self.da)

    def rates(self) -> None:
        given = self.get("model_params", "update_params") or {}
        rates = {}
        for name, (start0, lr0) in UPDATE_DEFAULTS.items():
            entry = given.get(name)
            entry = {"start_iter": start0, "lr": lr0} if entry is None else entry
            start, lr, end = entry.get("start_iter"), float(entry.get("lr") or 0.0), entry.get("end_iter")
            ours = RATE_NAMES[name]
            if start is None or lr == 0:
                rates[ours] = 0.0
                continue
            if name == "probe_pos_shifts":
                dx = self.pixel()
                if dx is None:
                    self.tr.untranslated.append(f"model_params.update_params.probe_pos_shifts: lr {lr:g} px: the "
                                                "pixel size is not known here (meas_calibration): positions frozen; "
                                                "give model.learning_rates.positions in Å")
                    rates[ours] = 0.0
                    continue
                lr = lr * dx
            value: dict[str, Any] = {"lr": None if self.lsq and ours != "positions" else lr}
            if int(start) != 1:
                value["start"] = int(start)
            if end is not None:
                value["end"] = int(end)
            rates[ours] = value["lr"] if list(value) == ["lr"] and value["lr"] is not None else value
        extra = sorted(set(given) - set(UPDATE_DEFAULTS))
        for name in extra:
            self.tr.untranslated.append(f"model_params.update_params.{name}: not a parameter phasestem refines")
        self.out["model"]["learning_rates"] = rates
        if not self.lsq and "probe" in given and rates.get("probe"):
            self.tr.approximate.append("model_params.update_params.probe: lr kept as it is; PtyRAD's probe is "
                                       "scaled to the patterns' intensity, phasestem's to Σ|ψ|² = 1, so the same "
                                       "Adam step is a different relative change")

    def losses(self) -> None:
        loss = self.out["losses"]
        single = self.get("loss_params", "loss_single") or {"state": True, "weight": 1.0, "dp_pow": 0.5}
        if single.get("state", True):
            loss["gaussian"] = float(single.get("weight", 1.0))
            if float(single.get("dp_pow", 0.5)) != 0.5:
                loss["power"] = float(single["dp_pow"])
        pois = self.get("loss_params", "loss_poissn")
        if isinstance(pois, dict) and pois.get("state"):
            loss["poisson"] = float(pois.get("weight", 1.0))
            if float(pois.get("dp_pow", 1.0)) != 1.0:
                self.tr.approximate.append("loss_params.loss_poissn.dp_pow: phasestem's Poisson term is on the "
                                           "intensities (dp_pow 1)")
        pac = self.get("loss_params", "loss_pacbed")
        if isinstance(pac, dict) and pac.get("state"):
            loss["pacbed"] = float(pac.get("weight", 0.5))
            self.tr.approximate.append("loss_params.loss_pacbed.dp_pow: phasestem's PACBED term uses losses.power")
        sparse = self.get("loss_params", "loss_sparse")
        if isinstance(sparse, dict) and sparse.get("state"):
            if int(sparse.get("ln_order", 1)) != 1:
                self.skip("loss_params", "loss_sparse", "phasestem's sparsity term is the L1 norm (ln_order 1)")
            else:
                loss["sparsity"] = float(sparse.get("weight", 0.1))
        if len([k for k in loss if k != "power"]) > 1:
            self.tr.approximate.append("loss_params: the weights are kept, but PtyRAD's data terms are normalised "
                                       "(NRMSE) and phasestem's Gaussian term is a sum of squares: the balance of "
                                       "the terms differs")
        self.skip("loss_params", "loss_simlar", "phasestem has no similarity term between object modes")

    def constraints(self) -> None:
        c = self.out["constraints"]
        given = self.sections.get("constraint_params", {})

        def entry(name):
            self.used.add(("constraint_params", name))
            return given.get(name, CONSTRAINT_DEFAULTS.get(name))

        def schedule(e) -> dict | None:
            if not isinstance(e, dict) or e.get("start_iter") is None:
                return None
            out = {"enabled": True, "start_iter": int(e["start_iter"])}
            if int(e.get("step") or 1) != 1:
                out["step"] = int(e["step"])
            if e.get("end_iter") is not None:
                out["end_iter"] = int(e["end_iter"])
            return out

        s = schedule(entry("ortho_pmode"))
        if s and self.out["model"].get("n_probe_modes", 4) > 1:
            c["ortho_probe"] = s
        e = entry("obj_rblur")
        if s := schedule(e):
            c["obj_blur"] = {**s, "sigma": float(e.get("std", 0.4))}
            if e.get("obj_type", "both") != "both":
                self.tr.approximate.append(f"constraint_params.obj_rblur.obj_type {e['obj_type']!r}: phasestem's "
                                           "obj_blur blurs amplitude and phase")
        e = entry("obj_zblur")
        if (s := schedule(e)) and self.out["model"].get("n_slices", 1) > 1:
            c["rz_filter"] = {**s, "sigma": float(e.get("std", 1.0)) * (self.dz or 10.0)}
            if e.get("obj_type", "both") != "both":
                self.tr.approximate.append(f"constraint_params.obj_zblur.obj_type {e['obj_type']!r}: phasestem's "
                                           "rz_filter filters amplitude and phase")
        e = entry("kz_filter")
        if s := schedule(e):
            c["kz_filter"] = {**s, "beta": float(e.get("beta", 1.0)), "obj_type": e.get("obj_type", "both")}
            self.tr.approximate.append("constraint_params.kz_filter.alpha: PtyRAD's lateral constant is not "
                                       "phasestem's alpha (a mix of filtered and unfiltered object): left at 1")
        e = entry("probe_mask_k")
        if s := schedule(e):
            if self.da is None:
                self.tr.untranslated.append("constraint_params.probe_mask_k: its radius is a fraction of kMax and "
                                            "the detector pixel is not known here (meas_calibration)")
            else:
                kmax = self.final_npix / 2 * self.da  # mrad (resampling keeps kMax)
                c["probe_mask"] = {**s, "radius_mrad": float(e.get("radius", 0.22)) * kmax,
                                   "width_mrad": float(e.get("width", 0.05)) * kmax}
        clamp: dict[str, Any] = {}
        e = entry("obja_thresh")
        if s := schedule(e):
            lo, hi = e.get("thresh", [0.98, 1.02])
            clamp.update(s, amp_min=float(lo), amp_max=float(hi), phase_min=None)
        e = entry("objp_postiv")
        if s := schedule(e):
            clamp = {**s, "amp_min": 0.0, "amp_max": 1e30, **clamp, "phase_min": 0.0}
        for name in ("obja_thresh", "objp_postiv"):
            if isinstance(given.get(name), dict) and given[name].get("start_iter") and given[name].get("relax"):
                self.tr.approximate.append(f"constraint_params.{name}.relax: phasestem clamps fully (relax 0)")
        c["obj_clamp"] = clamp or {"enabled": False}
        e = entry("tilt_smooth")
        if s := schedule(e):
            if self.step is None:
                self.tr.untranslated.append("constraint_params.tilt_smooth: its width is in scan positions and the "
                                            "scan step is not given")
            else:
                c["tilt_smooth"] = {**s, "sigma": float(e.get("std", 2.0)) * self.step}
        for name, why in (("fix_probe_int", "phasestem keeps the probe's intensity on the data's scale itself"),
                          ("pos_recenter", "phasestem does not re-centre the position corrections; "
                                           "constraints.position_affine removes their mean shift and affine part"),
                          ("probe_mask_r", "phasestem's real-space probe support is its Python API's "
                                           "probe_support_radius"),
                          ("kr_filter", "phasestem has no lateral Fourier filter of the object"),
                          ("kr_thresh", "phasestem has no threshold of the object's spatial frequencies"),
                          ("complex_ratio", "phasestem has no amplitude–phase coupling constraint"),
                          ("mirrored_amp", "phasestem has no amplitude-from-phase constraint"),
                          ("obj_z_recenter", "phasestem does not re-centre the object in depth")):
            e = entry(name)
            if schedule(e) is not None:
                default = "" if name in given else " (PtyRAD's default)"
                self.tr.untranslated.append(f"constraint_params.{name}: {short_value(e)}{default}: {why}")
            elif name in given:
                self.tr.ignored.append(f"constraint_params.{name}")
        for name in given:
            if ("constraint_params", name) not in self.used:
                self.skip("constraint_params", name, "not a PtyRAD 1.0 constraint phasestem knows")

    def run_settings(self) -> None:
        r = self.out["run"]
        opt = self.get("model_params", "optimizer_params") or {}
        name = opt.get("name", "Adam")
        if self.lsq:
            r["optimizer"] = "lsq"
        elif name in OPTIMIZERS:
            r["optimizer"] = OPTIMIZERS[name]
        else:
            r["optimizer"] = "adam"
            self.tr.approximate.append(f"model_params.optimizer_params.name {name!r}: phasestem runs adam")
        if opt.get("configs"):
            self.tr.untranslated.append(f"model_params.optimizer_params.configs: {short_value(opt['configs'])}: "
                                        "phasestem's optimizers take their default settings")
        if opt.get("load_state"):
            self.tr.untranslated.append("model_params.optimizer_params.load_state: phasestem resumes from its own "
                                        "checkpoint (phasestem reconstruct --resume)")
        sched = self.get("model_params", "scheduler_params")
        if not sched:
            r["lr_decay"] = "none"
        elif isinstance(sched, dict) and sched.get("name") == "CosineAnnealingLR":
            r["lr_decay"] = "cosine"
            self.tr.approximate.append("model_params.scheduler_params: CosineAnnealingLR as phasestem's cosine decay "
                                       "over the run to run.lr_final")
        else:
            r["lr_decay"] = "none"
            self.skip("model_params", "scheduler_params", "phasestem's only schedule is run.lr_decay: cosine")
        preload = self.get("model_params", "preload_data")
        if preload is not None:
            r["data_in_memory"] = bool(preload)
        niter = self.get("recon_params", "NITER", 200)
        r["n_epochs"] = int(niter)
        batch = self.get("recon_params", "BATCH_SIZE") or {"size": 32}
        accum = int(batch.get("grad_accumulation") or 1)
        r["batch_size"] = int(batch.get("size", 32)) * accum
        if accum > 1:
            self.tr.approximate.append(f"recon_params.BATCH_SIZE.grad_accumulation {accum}: one batch of "
                                       f"{r['batch_size']} patterns per update")
        group = self.get("recon_params", "GROUP_MODE", "random")
        if group in ("random", "compact"):
            r["batch_mode"] = group
        else:
            self.skip("recon_params", "GROUP_MODE", "phasestem's batches are random or compact: random used")
        idx = self.get("recon_params", "INDICES_MODE")
        if isinstance(idx, dict) and idx.get("mode", "full") != "full":
            self.skip("recon_params", "INDICES_MODE", "use data.scan_subset for a smaller field")
        save = self.get("recon_params", "SAVE_ITERS", 10)
        r["checkpoint_every"] = int(save or 0)
        comp = self.get("recon_params", "compiler_configs")
        if isinstance(comp, dict) and comp.get("enable"):
            r["compile"] = "compile"
        self.skip("recon_params", "output_dir", "PtyRAD names a folder per run inside it: give --out DIR (or "
                  "run.out_dir)")
        for key in OUTPUT_KEYS:
            if self.given("recon_params", key):
                self.used.add(("recon_params", key))
                self.tr.ignored.append(f"recon_params.{key}")

    def hypertune(self) -> None:
        h = self.sections.get("hypertune_params")
        if h is None:
            return
        for key in h:
            self.used.add(("hypertune_params", key))
        if h.get("if_hypertune"):
            self.tr.untranslated.append("hypertune_params: PtyRAD's hypertune mode: phasestem tune searches C10, the "
                                        "slice thickness and learning rates (a 'tune' section; docs/coming_from.md)")
        else:
            self.tr.ignored.append("hypertune_params (if_hypertune false)")


def translate(data: dict, source: str = "PtyRAD params", cwd: str | Path | None = None,
              lsq: bool = False, allow_untranslated: bool = False) -> Translation:
    """Translate a parsed PtyRAD params file. ``cwd``: the folder PtyRAD would run in (its ``meas_params.path`` is
    relative to it; default: the working directory); ``lsq``: phasestem's default solver instead of PtyRAD's
    optimizer (the learning rates' schedules and frozen parameters kept, their values left to lsq; positions in Å);
    ``allow_untranslated``: a setting that changes the geometry and is not translated (positions from another
    reconstruction, an off-centre detector crop) becomes a ``not translated`` line instead of a ConfigError."""
    if not is_ptyrad_params(data):
        from ..base.errors import ConfigError

        raise ConfigError(f"{source}: not a PtyRAD params file (expected an init_params section and no data/optics/"
                          "scan section)")
    return _Translator(data, source, Path(cwd or Path.cwd()).resolve(), lsq, allow_untranslated).run()


def translation_yaml(tr: Translation, source: str, base: str | Path | None = None) -> str:
    """The translated parameter file as YAML text: a header naming the source and each line of
    :meth:`Translation.report_lines` as a comment; with ``base`` (the folder the file is saved in) the data file's
    path is relative to it where it can be."""
    import os

    params = {k: dict(v) if isinstance(v, dict) else v for k, v in tr.params.items()}
    if base is not None and "file" in params.get("data", {}):
        try:
            params["data"]["file"] = os.path.relpath(params["data"]["file"], Path(base).resolve())
        except ValueError:  # another drive (Windows)
            pass
    head = [f"# phasestem reconstruct parameters translated from the PtyRAD params file {source}",
            "# by phasestem convert ptyrad (docs/coming_from.md). Check every value; what did not carry over:"]
    head += [f"#   {line}" for line in tr.report_lines()] or ["#   nothing"]
    body = yaml.safe_dump(params, sort_keys=False, default_flow_style=None, allow_unicode=True, width=110)
    return "\n".join(head) + "\n" + body
