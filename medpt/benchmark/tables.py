"""Comparison tables built only from run records: LaTeX (booktabs), Markdown and CSV.

Per (protocol, backbone, weights) group, so protocols, backbones and weights never share a
cell; inside a group one table per dataset, rows = methods, columns = ACC, macro-F1, AUC,
Cohen's kappa (mean ± sample standard deviation over seeds, in percent) and trainable
parameters, plus an overview of ACC across datasets. Best per column in bold, second
underlined (LaTeX) / italic (Markdown); a dagger marks cells with fewer seeds than planned.
Every table of a group on a random-init backbone carries the random-init warning.
"""
from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..clip.backbone import RANDOM_INIT_WARNING
from ..metrics import METRICS

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for a single value)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def group_key(rec: Dict) -> Tuple[str, str, str]:
    b = rec["backbone"]
    return rec["protocol"], b["name"], b["weights_id"]


def latest_per_job(records: Iterable[Dict]) -> List[Dict]:
    """Keep the newest record per (protocol, backbone, weights, dataset, method, seed)."""
    best: Dict = {}
    for r in records:
        k = group_key(r) + (r["dataset"], r["method"], r["seed"])
        if k not in best or r.get("finished_at", "") > best[k].get("finished_at", ""):
            best[k] = r
    return list(best.values())


def _fmt(m: float, s: float, digits: int = 2) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _fmt_params(n: Optional[int]) -> str:
    if n is None:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _ranks(values: List[float]) -> Dict[int, int]:
    order = sorted([(v, i) for i, v in enumerate(values) if not math.isnan(v)], key=lambda t: -t[0])
    out = {}
    distinct = sorted({v for v, _ in order}, reverse=True)
    for v, i in order:
        out[i] = distinct.index(v)  # 0 = best, 1 = second
    return out


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")


def build_tables(records: List[Dict], out_dir: Path, planned_seeds: Optional[int] = None,
                 method_order: Optional[Sequence[str]] = None) -> List[Path]:
    """Write every table for ``records`` under ``out_dir``; return the written paths.

    Args:
        records: run records (see :mod:`medpt.benchmark.records`).
        out_dir: tables folder; one sub-folder per (protocol, backbone, weights).
        planned_seeds: seeds planned per cell (default: the most seeds any cell has).
        method_order: row order (default: sorted names).
    """
    written: List[Path] = []
    groups: Dict = defaultdict(list)
    for r in latest_per_job(records):
        groups[group_key(r)].append(r)
    for (protocol, backbone, weights), recs in sorted(groups.items()):
        gdir = Path(out_dir) / _safe(f"{protocol}__{backbone}__{weights}")
        gdir.mkdir(parents=True, exist_ok=True)
        cells: Dict = defaultdict(list)
        params: Dict = {}
        for r in recs:
            cells[(r["dataset"], r["method"])].append(r)
            params[r["method"]] = r.get("trainable_params")
        n_plan = planned_seeds or max(len(v) for v in cells.values())
        random_init = any(not r["backbone"].get("pretrained", True) for r in recs)
        datasets = sorted({d for d, _ in cells})
        methods = [m for m in (method_order or []) if any(k[1] == m for k in cells)]
        methods += sorted({m for _, m in cells} - set(methods))
        notes = [f"Protocol {protocol}; backbone {backbone}; weights {weights}.",
                 f"Cells: mean ± sample standard deviation (ddof = 1) over {n_plan} seeds, in percent; "
                 "† marks cells with fewer seeds than planned."]
        if random_init:
            notes.append("WARNING: " + RANDOM_INIT_WARNING)
        for ds in datasets:
            rows, stats = [], []
            for m in methods:
                rs = cells.get((ds, m), [])
                if not rs:
                    continue
                row_stats = [mean_std([r["metrics"][k] for r in rs]) for k, _ in METRICS]
                stats.append((m, len(rs), row_stats))
            written += _write_one(gdir / ds, f"{ds}", stats, params, n_plan, notes,
                                  [name for _, name in METRICS], with_params=True)
        # overview: ACC per dataset
        stats = []
        for m in methods:
            row = []
            ns = []
            for ds in datasets:
                rs = cells.get((ds, m), [])
                ns.append(len(rs))
                row.append(mean_std([r["metrics"]["acc"] for r in rs]) if rs else (float("nan"), float("nan")))
            stats.append((m, min(ns) if ns else 0, row))
        written += _write_one(gdir / "overview_acc", "ACC per dataset", stats, params, n_plan, notes,
                              list(datasets), with_params=True)
    return written


def _write_one(stem: Path, title: str, stats, params, n_plan: int, notes: List[str], columns: List[str],
               with_params: bool) -> List[Path]:
    ncol = len(columns)
    ranks = [_ranks([s[2][j][0] for s in stats]) for j in range(ncol)]
    header = ["Method"] + columns + (["Params"] if with_params else [])
    md_rows, tex_rows, csv_rows = [], [], []
    for i, (m, n, row) in enumerate(stats):
        dagger = "†" if n < n_plan else ""
        md, tex, cs = [m], [latex_escape(m)], [m]
        for j, (mu, sd) in enumerate(row):
            txt = _fmt(mu, sd) + (dagger if not math.isnan(mu) else "")
            rk = ranks[j].get(i)
            md.append(f"**{txt}**" if rk == 0 else f"_{txt}_" if rk == 1 else txt)
            t = latex_escape(_fmt(mu, sd)).replace("±", r"$\pm$") + (r"$^\dagger$" if dagger and not math.isnan(mu) else "")
            tex.append(r"\textbf{" + t + "}" if rk == 0 else r"\underline{" + t + "}" if rk == 1 else t)
            cs += [f"{mu:.4f}" if not math.isnan(mu) else "", f"{sd:.4f}" if not math.isnan(sd) else "", n]
        if with_params:
            md.append(_fmt_params(params.get(m)))
            tex.append(latex_escape(_fmt_params(params.get(m))))
            cs.append(params.get(m) if params.get(m) is not None else "")
        md_rows.append(md)
        tex_rows.append(tex)
        csv_rows.append(cs)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_text = f"### {title}\n\n" + tabulate(md_rows, headers=header, tablefmt="github") + "\n\n" + \
        "\n".join(f"> {n}" for n in notes) + "\n"
    tex_lines = [r"\begin{table}[t]", r"\centering",
                 r"\caption{" + latex_escape(title) + ". " + latex_escape(" ".join(notes)).replace("±", r"$\pm$")
                 .replace("†", r"$^\dagger$") + "}",
                 r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    tex_lines += [" & ".join(r) + r" \\" for r in tex_rows]
    tex_lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method"] + [f"{c}_{x}" for c in columns for x in ("mean", "std", "n")] +
               (["trainable_params"] if with_params else []))
    w.writerows(csv_rows)
    paths = []
    for suffix, text in ((".md", md_text), (".tex", "\n".join(tex_lines)), (".csv", buf.getvalue())):
        p = stem.with_suffix(suffix)
        p.write_text(text)
        paths.append(p)
    return paths
