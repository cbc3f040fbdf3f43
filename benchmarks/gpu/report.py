"""Tables of the GPU suite (``benchmarks/gpu/run.sh``) into RESULTS/table.md and docs/benchmarks.md.

    python benchmarks/gpu/report.py RESULTS [--docs docs/benchmarks.md]

Reads the JSON files the parts wrote (any subset) and replaces the text between the GPU markers of
the docs file (appended at the end the first time). Nothing is measured here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BEGIN, END = "<!-- gpu-suite: begin (benchmarks/gpu/report.py) -->", "<!-- gpu-suite: end -->"
SEED_SET = 3500  # samples of the seed-000 generator's default output (5 files × 700)
ROOT = Path(__file__).resolve().parents[2]
SUBSET = ROOT / "benchmarks" / "gpu" / "simulate_seed_subset.yaml"
STEPS = ("none", "compile", "cuda_graph")  # run.compile, in the speed table's order


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def parts(results: Path) -> dict:
    out = {}
    f = results / "parts.jsonl"
    if f.exists():
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out[row["part"]] = row  # the latest run of each part
    return out


def fmt(v, spec=".3g") -> str:
    if v is None or v != v:  # None or nan
        return "–"
    return format(v, spec)


def section_env(results: Path, runs: dict) -> list[str]:
    env = load(results / "env.json") or {}
    when = max((r["when"] for r in runs.values()), default="–")
    lines = [f"Device: **{env.get('device', 'unknown')}** ({fmt(env.get('memory_gib'), '.0f')} GiB), "
             f"{env.get('cpus', '–')} CPU cores, torch {env.get('torch', '–')} (CUDA {env.get('cuda', '–')}), "
             f"Python {env.get('python', '–')}; last part run {when}. Command: `bash benchmarks/gpu/run.sh`.", ""]
    failed = [f"`{k}` (rc {v['rc']})" for k, v in runs.items() if v["rc"] != 0]
    if failed:
        lines += [f"Parts that failed or timed out in the recorded run: {', '.join(failed)}.", ""]
    return lines


def section_cuda(results: Path) -> list[str]:
    rows = load(results / "cuda_paths.json")
    if not rows:
        return []
    lines = ["**Reconstruction CLI on the GPU vs the CPU** (`cuda_paths.py`; 16 × 16 scan of 32² patterns, 10 epochs; "
             "`torchrun` = one NCCL process on `cuda:LOCAL_RANK`)", "",
             "| solver | run | exit | wall (s) | final loss | r vs CPU phase | max |Δφ| (rad) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['run']} | {r['rc']} | {r['wall_s']:.1f} | "
                     f"{fmt(r.get('final_loss'), '.4g')} | {fmt(r.get('r_vs_cpu'), '.5f')} | "
                     f"{fmt(r.get('max_abs_diff_rad'), '.2g')} |")
    return lines + [""]


def section_speed(results: Path) -> list[str]:
    """The rows of every speed_*.json (speed_b32.json and speed_b256.json of earlier runs, speed_bB_MODE.json)."""
    rows = [r for f in sorted(results.glob("speed_*.json")) for r in (load(f) or [])]
    if not rows:
        return []
    rows.sort(key=lambda r: (r["batch"], r["slices"], r["modes"], STEPS.index(r.get("compile", "none"))))
    lines = ["**AD seconds per iteration** (`recon_speed.py --device cuda`; Adam, 128² patterns, object + probe; the "
             "FFT bound is the FFTs alone; step: `run.compile`, none = eager)", "",
             "| slices | probe modes | patterns | batch | step | s / iteration | FFT bound (s) | ÷ bound | "
             "peak GPU GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['slices']} | {r['modes']} | {r['patterns']} | {r['batch']} | {r.get('compile', 'none')} "
                     f"| {r['s_per_iter']:.3f} | {r['fft_bound_s']:.3f} | {r['s_per_iter'] / r['fft_bound_s']:.1f} | "
                     f"{fmt(r['peak_gib'], '.2f')} |")
    return lines + [""]


def section_learned(results: Path) -> list[str]:
    rows = (load(results / "learned_bf16.json") or []) + (load(results / "learned_fp32.json") or [])
    if not rows:
        return []
    lines = ["**Networks** (`bench_learned.py --devices cuda`; seed size: 50 × 50 scan of 64² patterns → 256² phase; "
             "random weights and inputs)", "",
             "| size | AMP | params (M) | patch net train (blocks/s) | patch net infer (blocks/s) | stitch net train "
             "(samples/s) | end-to-end train (samples/s) | predict one 256² phase (s) | peak GPU GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = max((v for k, v in r.items() if k.startswith("peak_GiB")), default=None)
        lines.append(f"| {r['size']} | {r['amp']} | {r['params_M']:.1f} | {fmt(r['patch_train_blocks_s'])} | "
                     f"{fmt(r['patch_infer_blocks_s'])} | {fmt(r['stitch_train_samples_s'])} | "
                     f"{fmt(r['e2e_train_samples_s'])} | {fmt(r['predict_one_s'])} | {fmt(peak, '.2f')} |")
    return lines + [""]


def section_sim(results: Path, runs: dict) -> list[str]:
    lines = []
    ab = load(results / "sim_abtem.json")
    if ab:
        lines += ["**Simulation, one seed-spec sample** (`sim_abtem/bench_abtem.py --device cuda`; "
                  f"{ab['scan'][0]} × {ab['scan'][1]} positions, {ab['phonons']} phonons, {ab['gpts']}² grid; "
                  "phasestem on the GPU, abTEM given `device: gpu`; second run of each timed)", "",
                  "| code | time (s) | abTEM ÷ phasestem | FFT bound (s) | peak GPU GiB | largest |Δ| / max |",
                  "|---|---|---|---|---|---|",
                  f"| phasestem | {ab['phasestem_s']:.2f} | {ab['ratio']:.1f} | {ab['fft_bound_s']:.2f} | "
                  f"{fmt(ab['phasestem_peak_gib'], '.2f')} | {ab['rel_max']:.1e} |",
                  f"| abTEM {ab['abtem']} (`device: gpu`, {ab.get('abtem_potential', 'cupy')} potential) | "
                  f"{ab['abtem_s']:.2f} | 1 | | | |", ""]
        cpu = ab.get("abtem_cpu_s")
        if cpu is not None and cpu >= 0.8 * ab["abtem_s"]:
            lines += [f"abTEM's CPU time ({cpu:.1f} s) equals its wall time: it computed on the CPU, not the GPU, so "
                      "this ratio is phasestem on the GPU against abTEM on the CPU, not a GPU-to-GPU comparison.", ""]
    import yaml

    n = yaml.safe_load(SUBSET.read_text())["output"]["samples_per_file"]
    rows = [(name, label, runs[name]) for name, label in (("sim_seed", "1 process"),
                                                          ("sim_seed_workers", "Dask worker processes"))
            if name in runs]
    if rows:
        lines += [f"**Seed-000 generator on the GPU** (`phasestem simulate {SUBSET.relative_to(ROOT)}`: {n} samples "
                  "of the default generator; wall time with process start and HDF5 writing, gzip 4, included; the "
                  f"3,500-sample set extrapolated, target < 1 h)", "",
                  "| run | exit | wall (s) | s / sample | 3,500 samples (h) |", "|---|---|---|---|---|"]
        for name, label, r in rows:
            if r["rc"] != 0:
                lines.append(f"| {label} | {r['rc']} (log `{name}.log`) | {r['wall_s']} | – | – |")
                continue
            per = r["wall_s"] / n
            lines.append(f"| {label} | 0 | {r['wall_s']} | {per:.2f} | {per * SEED_SET / 3600:.2f} |")
        lines.append("")
    return lines


def section_recon(results: Path) -> list[str]:
    res = load(results / "independent" / "full" / "results.json")
    if not res:
        return []
    lines = ["**Time to accuracy on the independent cases** (`independent/bench.py --device cuda --tools phasestem "
             "ptyrad ptychi`; same NumPy-multislice data, settings and scoring as the CPU table above; target = the "
             "best GPU peer's final r)", "",
             "| case | tool | final r | peak r | s / iteration | time to target (s) |", "|---|---|---|---|---|---|"]
    for case, entry in res.items():
        for tool, v in entry["tools"].items():
            if "final_r" not in v:
                lines.append(f"| {case} | {tool} | – ({v.get('error', 'no result')[:60]}) | | | |")
                continue
            ttt = v.get("time_to_target")
            lines.append(f"| {case} | {tool} | {v['final_r']:.4f} | {v['peak_r']:.4f} | {v['s_per_it']:.3f} | "
                         f"{'not reached' if ttt is None else format(ttt, '.2f')} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--docs", type=Path, default=None)
    args = ap.parse_args()
    runs = parts(args.results)
    body = (["## GPU figures (`benchmarks/gpu/run.sh`)", ""] + section_env(args.results, runs)
            + section_cuda(args.results) + section_speed(args.results) + section_learned(args.results)
            + section_sim(args.results, runs) + section_recon(args.results))
    text = "\n".join(body).rstrip() + "\n"
    (args.results / "table.md").write_text(text)
    print(text)
    if args.docs:
        doc = args.docs.read_text()
        block = f"{BEGIN}\n{text}{END}"
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip() + "\n\n" + block + "\n"
        args.docs.write_text(doc)


if __name__ == "__main__":
    main()
