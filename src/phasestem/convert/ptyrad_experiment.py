"""The experiment of a PtyRAD 1.0 params file (optics and aberrations, detector, scan, data file and crop) in
phasestem's terms; the reconstruction settings are :mod:`phasestem.convert.ptyrad`'s."""
from __future__ import annotations

import math
from pathlib import Path

from .ptyrad_reader import PtyradReader, short_value

#: Haider name → (Krivanek name, Krivanek / Haider magnitude)
HAIDER = {"C1": ("C10", 1), "A1": ("C12", 1), "B2": ("C21", 3), "A2": ("C23", 1), "C3": ("C30", 1),
          "S3": ("C32", 4), "A3": ("C34", 1), "B4": ("C41", 4), "D4": ("C43", 4), "A4": ("C45", 1),
          "C5": ("C50", 1), "S5": ("C52", 6), "R5": ("C54", 6), "A5": ("C56", 1)}


class ExperimentSections(PtyradReader):
    """optics, aberrations, detector, scan, data and crop of the translation (sets ``self.energy``,
    ``self.wavelength``, ``self.conv`` and what :mod:`phasestem.convert.ptyrad`'s sections read after them)."""

    def optics(self) -> None:
        from ..physics.optics import wavelength

        kind = self.get("init_params", "probe_illum_type", "electron")
        if kind != "electron":
            raise self.fail("init_params.probe_illum_type", f"{kind!r}: phasestem reconstructs electron data only")
        kv = self.get("init_params", "probe_kv")
        if not isinstance(kv, int | float) or kv <= 0:
            raise self.fail("init_params.probe_kv", f"expected the acceleration voltage in kV, got {short_value(kv)}")
        self.energy = float(kv) * 1e3
        self.wavelength = wavelength(self.energy)  # Å
        self.out["optics"]["energy"] = self.energy
        conv = self.get("init_params", "probe_conv_angle")
        if conv is not None:
            self.out["optics"]["semiangle"] = float(conv)
        self.conv = conv
        ab = self.get("init_params", "probe_aberrations") or {}
        if not isinstance(ab, dict):
            raise self.fail("init_params.probe_aberrations",
                            f"expected a mapping of coefficients, got {short_value(ab)}")
        aberrations = self.aberrations(ab)
        z = self.get("init_params", "probe_z_shift")
        if z and self.get("init_params", "probe_source", "simu") == "simu":
            aberrations["C10"] = aberrations.get("C10", 0.0) + float(z)  # the focus moved z further downstream
            self.tr.approximate.append(f"init_params.probe_z_shift {z:g} Å: added to C10 (propagating the nominal "
                                       f"probe by z is C10 + z), C10 = {aberrations['C10']:g} Å")
        elif z:
            self.skip("init_params", "probe_z_shift", "shifts a loaded probe, which is not translated")
        self.out["optics"]["aberrations"] = aberrations

    def aberrations(self, ab: dict) -> dict[str, float]:
        """Krivanek polar coefficients in Å and azimuths in rad from PtyRAD's polar / cartesian / Haider / alias
        names (its azimuths in degrees)."""
        from ..physics.optics import ABERRATION_ORDERS

        out: dict[str, float] = {}
        cart: dict[str, list[float]] = {}
        for key, value in ab.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise self.fail(f"init_params.probe_aberrations.{key}", f"expected a number, got {short_value(value)}"
                                ) from None
            key = str(key)
            if key == "defocus":
                out["C10"] = out.get("C10", 0.0) - v
            elif key == "Cs":
                out["C30"] = out.get("C30", 0.0) + v
            elif key in ABERRATION_ORDERS:
                out[key] = out.get(key, 0.0) + v
            elif key.startswith("phi") and f"C{key[3:]}" in ABERRATION_ORDERS:
                out[key] = math.radians(v)
            elif key[:-1] in ABERRATION_ORDERS and key[-1] in "ab" and ABERRATION_ORDERS[key[:-1]][1] > 0:
                cart.setdefault(key[:-1], [0.0, 0.0])["ab".index(key[-1])] = v
            elif key in HAIDER:
                name, scale = HAIDER[key]
                out[name] = out.get(name, 0.0) + v * scale
            elif key.endswith("phi") and key[:-3] in HAIDER:
                out[f"phi{HAIDER[key[:-3]][0][1:]}"] = math.radians(v)
            else:
                self.tr.untranslated.append(f"init_params.probe_aberrations.{key}: {v:g}: not an aberration name "
                                            "phasestem knows (Krivanek C10 … C56, phiNM, Cs, defocus)")
        for name, (a, b) in cart.items():
            m = ABERRATION_ORDERS[name][1]
            out[name] = math.hypot(a, b)
            out[f"phi{name[1:]}"] = math.atan2(b, a) / m
        if any(k.startswith("phi") for k in out):
            self.tr.approximate.append("init_params.probe_aberrations: azimuths converted from degrees to rad; "
                                       "the axis they are measured from is not checked against phasestem's x axis")
        return out

    def detector(self) -> None:
        """optics.angular_sampling (mrad per raw detector pixel) from meas_calibration, and the final geometry."""
        npix = self.get("init_params", "meas_Npix")
        if not isinstance(npix, int) or npix < 1:
            raise self.fail("init_params.meas_Npix",
                            f"expected the detector's pixels per side, got {short_value(npix)}")
        self.npix = npix
        calib = self.get("init_params", "meas_calibration", {"mode": "fitRBF"}) or {"mode": "fitRBF"}
        mode, value = calib.get("mode", "fitRBF"), calib.get("value")
        lam, conv = self.wavelength, self.conv
        rules = {"dx": lambda v: lam * 1e3 / (npix * v), "dk": lambda v: v * lam * 1e3,
                 "kMax": lambda v: 2 * v * lam * 1e3 / npix, "da": lambda v: v, "angleMax": lambda v: 2 * v / npix,
                 "RBF": lambda v: conv / v, "n_alpha": lambda v: 2 * v * conv / npix}
        self.da = None
        if mode in rules and value is not None and (conv is not None or mode not in ("RBF", "n_alpha")):
            self.da = float(rules[mode](float(value)))
            self.out["optics"]["angular_sampling"] = self.da
        elif mode == "fitRBF" or mode in rules:
            default = "" if self.given("init_params", "meas_calibration") else " (PtyRAD's default)"
            self.tr.untranslated.append(
                f"init_params.meas_calibration: {short_value(calib)}{default}: phasestem does not fit the pixel size "
                "from the bright-field disk: the data file's calibration is used, else give "
                "optics.angular_sampling (mrad) or optics.sampling (Å), or measure it with phasestem calibrate")
        else:
            raise self.fail("init_params.meas_calibration.mode", f"{mode!r}: expected one of "
                            f"{', '.join(rules)} or fitRBF")

    def scan(self) -> None:
        """scan.shape and scan.step; PtyRAD's flips and affine of the grid as scan.rotation, step and affine
        (:mod:`.ptyrad_scan`); positions it would take from elsewhere stop the translation (:meth:`geometry`)."""
        s = self.out["scan"]
        slow, fast = self.get("init_params", "pos_N_scan_slow"), self.get("init_params", "pos_N_scan_fast")
        if slow and fast:
            s["shape"] = [int(slow), int(fast)]
        n = self.get("init_params", "pos_N_scans")
        if n is not None and slow and fast and int(n) != int(slow) * int(fast):
            raise self.fail("init_params.pos_N_scans", f"{n} but pos_N_scan_slow × pos_N_scan_fast = "
                            f"{int(slow) * int(fast)}")
        step = self.get("init_params", "pos_scan_step_size")
        if self.get("init_params", "pos_source", "simu") != "simu":
            self.get("init_params", "pos_params")
            self.geometry("init_params.pos_source", self.sections["init_params"]["pos_source"], "positions from "
                          "another reconstruction (pos_params)", "give scan.positions_file (.npy of (N, 2) probe "
                          "centres in Å)")
        else:
            step = self.simulated_step(step, s.get("shape"))
        self.step = None if step is None else float(step)
        if step is not None:
            s["step"] = self.step
        s.update(self.grid_geometry())
        self.skip("init_params", "pos_scan_rand_std", "phasestem starts from the given positions, without a "
                  "random jitter")

    def simulated_step(self, step: float | None, shape: list[int] | None) -> float | None:
        """The step of PtyRAD's simulated raster: ``pos_params`` (source ``simu``) may give its own
        ``scan_step_size`` (Å); its ``dx`` rescales the raster against the object pixel and is not translated;
        its scan size must be the file's."""
        given = self.get("init_params", "pos_params")
        if not given:
            return step
        if not isinstance(given, dict):
            raise self.fail("init_params.pos_params", f"{short_value(given)}: with pos_source simu, expected null or a "
                            "mapping (scan_step_size, N_scan_slow, N_scan_fast, dx, probe_shape)")
        for key, ours in (("N_scan_slow", 0), ("N_scan_fast", 1)):
            if given.get(key) is not None and shape is not None and int(given[key]) != shape[ours]:
                raise self.fail(f"init_params.pos_params.{key}", f"{given[key]} but pos_{key} is {shape[ours]}: "
                                "PtyRAD needs one position per pattern")
        if given.get("dx") is not None:
            self.geometry("init_params.pos_params.dx", given["dx"], "scales the simulated positions by PtyRAD's "
                          "pixel / this dx", "give scan.step in Å")
        return given.get("scan_step_size", step)

    def grid_geometry(self) -> dict:
        """scan.rotation / step / affine for ``pos_scan_flipT`` and ``pos_scan_affine`` (:func:`.scan_fields`)."""
        from .ptyrad_scan import scan_fields

        flip = self.get("init_params", "pos_scan_flipT")
        affine = self.get("init_params", "pos_scan_affine")
        if flip is not None and (not isinstance(flip, list | tuple) or len(flip) != 3
                                 or any(v not in (0, 1) for v in flip)):
            raise self.fail("init_params.pos_scan_flipT", f"expected [flipud, fliplr, transpose] (0 or 1), got "
                            f"{short_value(flip)}")
        numbers = isinstance(affine, list | tuple) and all(isinstance(v, int | float) for v in affine)
        if affine is not None and (not numbers or len(affine) != 4):
            raise self.fail("init_params.pos_scan_affine", f"expected [scale, asymmetry, rotation, shear] "
                            f"(rotation and shear in degrees), got {short_value(affine)}")
        flips = None if flip is None or not any(flip) else tuple(bool(v) for v in flip)
        try:
            return scan_fields(None if affine is None else [float(v) for v in affine], flips, self.step)
        except ValueError as err:
            raise self.fail("init_params.pos_scan_affine", f"{short_value(affine)}: {err}") from None

    def data(self) -> None:
        d = self.out["data"]
        src = self.get("init_params", "meas_source", "file")
        meas = self.get("init_params", "meas_params")
        if src == "custom" or not isinstance(meas, dict) or not meas.get("path"):
            raise self.fail("init_params.meas_params", f"{short_value(meas)}: phasestem reads the patterns from a "
                            "file: expected {path: FILE, key: …}")
        path = Path(str(meas["path"])).expanduser()
        d["file"] = str(path if path.is_absolute() else self.cwd / path)
        if meas.get("key"):
            d["patterns_key"] = str(meas["key"])
        if path.suffix.lower() == ".raw" and self.npix == 128 and not meas.get("shape"):
            d["reader_options"] = {"detector": "empad"}
        for extra in ("shape", "offset", "gap", "selection", "zarr_kwargs"):
            if meas.get(extra) is not None:
                self.tr.untranslated.append(f"init_params.meas_params.{extra}: {short_value(meas[extra])}: give the "
                                            "reader's own option in data.reader_options (phasestem.io)")
        flip = self.get("init_params", "meas_flipT")
        if flip is not None:
            ud, lr, t = (bool(int(v)) for v in flip)
            # PtyRAD flips (rows, then columns) and then transposes; phasestem transposes first, then flips:
            # transpose(flip_rows(x)) = flip_columns(transpose(x))
            d.update({"transpose": True, "flip_y": lr, "flip_x": ud} if t else {"flip_y": ud, "flip_x": lr})
            d = {k: v for k, v in d.items() if v is not False}
            self.out["data"] = d
        self.final_npix = self.npix
        crop = self.get("init_params", "meas_crop")
        if crop is not None:
            self.crop(crop)
        pad = self.get("init_params", "meas_pad")
        target = None
        if isinstance(pad, dict) and pad.get("mode") is not None:
            target = int(pad.get("target_Npix", 256))
            kind = pad.get("padding_type", "power")
            if kind != "constant" or pad.get("value", 0):
                self.tr.approximate.append(f"init_params.meas_pad: padding_type {kind!r}: phasestem pads with zeros "
                                           "(data.pad); PtyRAD fills the margin with a fitted background")
        elif pad is not None:
            self.tr.ignored.append("init_params.meas_pad")
        self.dx_npix = target or self.final_npix  # the probe window whose pixel PtyRAD's dx is
        res = self.get("init_params", "meas_resample")
        factor = 1.0
        if isinstance(res, dict) and res.get("mode") is not None:
            fy, fx = (float(v) for v in res.get("scale_factors", [2, 2]))
            if fy != fx:
                raise self.fail("init_params.meas_resample.scale_factors", f"{fy:g} ≠ {fx:g}: PtyRAD takes one")
            factor = fy
            d["resample"] = [round(self.final_npix * factor)] * 2
        elif res is not None:
            self.tr.ignored.append("init_params.meas_resample")
        if target is not None:
            d["pad"] = [round(target * factor)] * 2
        for key in ("meas_permute", "meas_reshape"):
            self.skip("init_params", key, "phasestem's readers take the (Sy, Sx, H, W) or (N, H, W) layout and "
                      "scan.shape; give data.reader_options for another layout")
        for key, why in (("meas_add_source_size", "adds partial coherence to the data; simulate with "
                                                   "phasestem simulate instead"),
                         ("meas_add_detector_blur", "blurs the data; simulate with phasestem simulate instead"),
                         ("meas_add_poisson_noise", "adds noise to the data; simulate with phasestem simulate "
                                                    "(dose) instead"),
                         ("meas_export", "phasestem does not export the prepared patterns"),
                         ("meas_remove_neg_values", "phasestem's readers keep the counts as they are"),
                         ("meas_normalization", "phasestem scales the patterns itself"),
                         ("probe_normalization", "phasestem scales the probe to the patterns itself"),
                         ("probe_permute", "applies to a loaded probe, which is not translated")):
            if self.given("init_params", key):
                value = self.sections["init_params"][key]
                default = {"meas_remove_neg_values": "clip_neg", "meas_normalization": "max_at_one",
                           "probe_normalization": "mean_total_ints"}.get(key)
                if isinstance(value, dict) and default is not None and value.get("mode") == default:
                    self.used.add(("init_params", key))
                    self.tr.ignored.append(f"init_params.{key}")
                else:
                    self.skip("init_params", key, why)

    def crop(self, crop: list) -> None:
        d = self.out["data"]
        if not isinstance(crop, list) or len(crop) != 4:
            raise self.fail("init_params.meas_crop", f"expected [[slow], [fast], [ky], [kx]] ranges, got "
                            f"{short_value(crop)}")
        slow, fast, ky, kx = crop
        if slow is not None or fast is not None:
            sy, sx = self.out["scan"].get("shape", [None, None])
            r0, r1 = slow or [0, sy]
            c0, c1 = fast or [0, sx]
            if None in (r0, r1, c0, c1):
                raise self.fail("init_params.meas_crop", "a scan range needs pos_N_scan_slow and pos_N_scan_fast")
            d["scan_subset"] = [int(r0), int(r1), int(c0), int(c1)]
        if ky is not None or kx is not None:
            ky, kx = ky or [0, self.npix], kx or [0, self.npix]
            h, w = ky[1] - ky[0], kx[1] - kx[0]
            centred = all(r[0] == self.npix // 2 - n // 2 for r, n in ((ky, h), (kx, w)))
            if not centred:
                self.geometry("init_params.meas_crop", crop, "an off-centre detector crop moves the pattern's "
                              "centre", "crop the file yourself (phasestem's data.crop keeps the central pixels)")
                return
            d["crop"] = [int(h), int(w)]
            self.final_npix = int(w)
