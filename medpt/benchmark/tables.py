"""Comparison tables built only from run records: LaTeX (booktabs), Markdown and CSV.

Records are grouped by (protocol, backbone, weights), so these never share a cell; each group
gets its own folder. Inside a group, a table is rows x columns of cells, each cell the records of
one (row, dataset) over seeds, shown as mean ± sample standard deviation (ddof = 1) in percent.
Rows are methods, or variants for ablations (a record's ``variant`` label, else its method).
Best per column in bold, second underlined (LaTeX) / italic (Markdown); a dagger marks cells with
fewer seeds than planned; the caption names the dispersion; a random-init backbone puts its
warning under every table.

Table kinds (used by suites, :mod:`medpt.benchmark.suites`):

* ``per_dataset``: one table per dataset, columns ACC, macro-F1, AUC, kappa, trainable params.
* ``modality``: one table per modality group (the paper's layout), columns dataset x metric.
* ``average``: the average over datasets: per seed, the mean over the datasets, then mean ± std
  over seeds; with the trainable-parameter column (the paper's average table).
* ``overview``: ACC per dataset, one column per dataset.
* ``ablation``: rows = variants, columns dataset x metric.
* ``per_class``: per-class accuracy, rows = classes, columns = rows of the grid (class-imbalance
  study).
* ``label_ratio``: ACC per label ratio, per dataset.
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

#: The paper's modality groups (Table layout of the CILMP paper), dataset ids in column order.
MODALITY_GROUPS = {
    "Dermatoscope": ["dermamnist", "derm7pt", "isic2018"],
    "Fundus": ["adam", "aptos2019", "odir"],
    "Ultrasound": ["fetal_us"],
    "Histopathology": ["chaoyang"],
    "Endoscope": ["kvasir"],
    "X-ray": ["cpn_xray", "pneumonia", "pneumonia_sample", "pneumoniamnist"],
}

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}

Cell = Tuple[float, float, int]  # mean, sample std, number of seeds


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for a single value)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def row_name(rec: Dict) -> str:
    """Table row of a record: its variant label, else its method."""
    return rec.get("variant") or rec["method"]


def group_key(rec: Dict) -> Tuple[str, str, str]:
    b = rec["backbone"]
    return rec["protocol"], b["name"], b["weights_id"]


def latest_per_job(records: Iterable[Dict]) -> List[Dict]:
    """Keep the newest record per (protocol, backbone, weights, dataset, row, seed, label ratio)."""
    best: Dict = {}
    for r in records:
        k = group_key(r) + (r["dataset"], row_name(r), r["seed"], r.get("label_ratio", 1.0), r.get("num_shots", -1))
        if k not in best or r.get("finished_at", "") > best[k].get("finished_at", ""):
            best[k] = r
    return list(best.values())


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")


def _fmt(m: float, s: float, digits: int = 2) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_params(n: Optional[int]) -> str:
    """2,048 -> '2.0K'; 3,846,528 -> '3.85M'."""
    if n is None:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _ranks(values: List[float]) -> Dict[int, int]:
    distinct = sorted({v for v in values if not math.isnan(v)}, reverse=True)
    return {i: distinct.index(v) for i, v in enumerate(values) if not math.isnan(v)}


class Table:
    """A rendered table: title, rows, two-level columns, cells, notes.

    Args:
        title: caption start.
        rows: row labels.
        columns: ``(group, name)`` pairs; groups with a non-empty name get a spanning header.
        cells: ``cells[i][j]`` = (mean, std, n) for row i, column j.
        extra: optional trailing text column (e.g. trainable params), ``(header, [values])``.
        notes: lines under the table / in the caption.
        n_plan: planned seeds (cells with fewer get a dagger).
    """

    def __init__(self, title: str, rows: List[str], columns: List[Tuple[str, str]], cells: List[List[Cell]],
                 notes: List[str], n_plan: int, extra: Optional[Tuple[str, List[str]]] = None):
        self.title, self.rows, self.columns, self.cells = title, rows, columns, cells
        self.notes, self.n_plan, self.extra = notes, n_plan, extra

    def _ranks(self):
        return [_ranks([self.cells[i][j][0] for i in range(len(self.rows))]) for j in range(len(self.columns))]

    def markdown(self) -> str:
        ranks = self._ranks()
        header = ["Method"] + [f"{g} {n}".strip() for g, n in self.columns] + ([self.extra[0]] if self.extra else [])
        body = []
        for i, r in enumerate(self.rows):
            line = [r]
            for j in range(len(self.columns)):
                mu, sd, n = self.cells[i][j]
                txt = _fmt(mu, sd) + ("†" if n < self.n_plan and not math.isnan(mu) else "")
                rk = ranks[j].get(i)
                line.append(f"**{txt}**" if rk == 0 else f"_{txt}_" if rk == 1 else txt)
            if self.extra:
                line.append(self.extra[1][i])
            body.append(line)
        return (f"### {self.title}\n\n" + tabulate(body, headers=header, tablefmt="github") + "\n\n"
                + "\n".join(f"> {n}" for n in self.notes) + "\n")

    def latex(self) -> str:
        ranks = self._ranks()
        ncol = len(self.columns) + 1 + (1 if self.extra else 0)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 r"\caption{" + latex_escape(self.title + ". " + " ".join(self.notes)).replace("±", r"$\pm$")
                 .replace("†", r"$^\dagger$") + "}",
                 r"\begin{tabular}{l" + "c" * (ncol - 1) + "}", r"\toprule"]
        groups = [g for g, _ in self.columns]
        if any(g and n for g, n in self.columns):
            spans, rules, col = [""], [], 2
            k = 0
            while k < len(groups):
                g = groups[k]
                w = 1
                while k + w < len(groups) and groups[k + w] == g:
                    w += 1
                spans.append(r"\multicolumn{" + str(w) + "}{c}{" + latex_escape(g) + "}")
                rules.append(r"\cmidrule(lr){" + f"{col}-{col + w - 1}" + "}")
                col += w
                k += w
            if self.extra:
                spans.append("")
            lines.append(" & ".join(spans) + r" \\")
            lines.append(" ".join(rules))
            names = [n for _, n in self.columns]
        else:
            names = [g or n for g, n in self.columns]
        lines.append(" & ".join(["Method"] + [latex_escape(n) for n in names] +
                                ([latex_escape(self.extra[0])] if self.extra else [])) + r" \\")
        lines.append(r"\midrule")
        for i, r in enumerate(self.rows):
            cells = [latex_escape(r)]
            for j in range(len(self.columns)):
                mu, sd, n = self.cells[i][j]
                t = latex_escape(_fmt(mu, sd)).replace("±", r"$\pm$")
                if n < self.n_plan and not math.isnan(mu):
                    t += r"$^\dagger$"
                rk = ranks[j].get(i)
                cells.append(r"\textbf{" + t + "}" if rk == 0 else r"\underline{" + t + "}" if rk == 1 else t)
            if self.extra:
                cells.append(latex_escape(self.extra[1][i]))
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["row"] + [f"{g}|{n}|{x}" for g, n in self.columns for x in ("mean", "std", "n")] +
                   ([self.extra[0]] if self.extra else []))
        for i, r in enumerate(self.rows):
            vals = []
            for mu, sd, n in self.cells[i]:
                vals += ["" if math.isnan(mu) else f"{mu:.4f}", "" if math.isnan(sd) else f"{sd:.4f}", n]
            w.writerow([r] + vals + ([self.extra[1][i]] if self.extra else []))
        return buf.getvalue()

    def write(self, stem: Path) -> List[Path]:
        stem.parent.mkdir(parents=True, exist_ok=True)
        out = []
        for suffix, text in ((".md", self.markdown()), (".tex", self.latex()), (".csv", self.csv())):
            p = stem.with_suffix(suffix)
            p.write_text(text)
            out.append(p)
        return out


class RecordSet:
    """Records of one (protocol, backbone, weights) group, indexed for table building."""

    def __init__(self, records: List[Dict], n_plan: Optional[int] = None, row_order: Sequence[str] = ()):
        self.records = records
        self.cells: Dict = defaultdict(list)
        self.params: Dict[str, Optional[int]] = {}
        for r in records:
            self.cells[(r["dataset"], row_name(r))].append(r)
            self.params[row_name(r)] = r.get("trainable_params")
        self.n_plan = n_plan or max((len(v) for v in self.cells.values()), default=1)
        present = {k[1] for k in self.cells}
        self.rows = [m for m in row_order if m in present] + sorted(present - set(row_order))
        self.datasets = sorted({k[0] for k in self.cells})
        protocol, backbone, weights = group_key(records[0])
        self.notes = [f"Protocol {protocol}; backbone {backbone}; weights {weights}.",
                      f"Mean ± sample standard deviation (ddof = 1) over {self.n_plan} seeds, in percent; "
                      "† marks cells with fewer seeds than planned."]
        if any(not r["backbone"].get("pretrained", True) for r in records):
            self.notes.append("WARNING: " + RANDOM_INIT_WARNING)
        # method warnings copied into records (e.g. CILMP's random-LLM fallback), once each
        for w in dict.fromkeys(w for r in records for w in r.get("warnings", []) if w != RANDOM_INIT_WARNING):
            self.notes.append(f"WARNING ({', '.join(sorted({row_name(r) for r in records if w in r.get('warnings', [])}))}): {w}")
        self.group_dir = _safe(f"{protocol}__{backbone}__{weights}")

    def cell(self, dataset: str, row: str, metric: str) -> Cell:
        rs = self.cells.get((dataset, row), [])
        mu, sd = mean_std([r["metrics"][metric] for r in rs])
        return mu, sd, len(rs)

    def param_col(self, rows: List[str]) -> Tuple[str, List[str]]:
        return "Params", [fmt_params(self.params.get(r)) for r in rows]

    # -- kinds -------------------------------------------------------------------------------
    def per_dataset(self) -> Dict[str, Table]:
        out = {}
        for ds in self.datasets:
            rows = [r for r in self.rows if (ds, r) in self.cells]
            cols = [(name, "") for _, name in METRICS]
            cells = [[self.cell(ds, r, k) for k, _ in METRICS] for r in rows]
            out[ds] = Table(ds, rows, cols, cells, self.notes, self.n_plan, self.param_col(rows))
        return out

    def multi(self, datasets: Sequence[str], title: str, metrics=METRICS) -> Table:
        datasets = [d for d in datasets if any((d, r) in self.cells for r in self.rows)]
        rows = [r for r in self.rows if any((d, r) in self.cells for d in datasets)]
        cols = [(d, name) for d in datasets for _, name in metrics]
        cells = [[self.cell(d, r, k) for d in datasets for k, _ in metrics] for r in rows]
        return Table(title, rows, cols, cells, self.notes, self.n_plan, self.param_col(rows))

    def modality(self) -> Dict[str, Table]:
        out = {}
        known = {d for ds in MODALITY_GROUPS.values() for d in ds}
        groups = dict(MODALITY_GROUPS)
        others = [d for d in self.datasets if d not in known]
        if others:
            groups["Other"] = others
        for g, ds in groups.items():
            if any(d in self.datasets for d in ds):
                out[g] = self.multi(ds, f"{g} datasets")
        return out

    def average(self, datasets: Optional[Sequence[str]] = None) -> Table:
        datasets = list(datasets or self.datasets)
        rows = [r for r in self.rows if all((d, r) in self.cells for d in datasets)]
        cells = []
        for r in rows:
            row = []
            for k, _ in METRICS:
                per_seed = defaultdict(list)
                for d in datasets:
                    for rec in self.cells[(d, r)]:
                        per_seed[rec["seed"]].append(rec["metrics"][k])
                full = [float(np.mean(v)) for v in per_seed.values() if len(v) == len(datasets)]
                mu, sd = mean_std(full)
                row.append((mu, sd, len(full)))
            cells.append(row)
        title = f"Average over {len(datasets)} datasets ({', '.join(datasets)})"
        return Table(title, rows, [(name, "") for _, name in METRICS], cells, self.notes, self.n_plan,
                     self.param_col(rows))

    def overview(self) -> Table:
        return self.multi(self.datasets, "ACC per dataset", metrics=(("acc", "ACC"),))

    def per_class(self, dataset: str, rows: Optional[Sequence[str]] = None) -> Optional[Table]:
        rows = [r for r in (rows or self.rows) if (dataset, r) in self.cells]
        if not rows:
            return None
        names = self.cells[(dataset, rows[0])][0]["classnames"]
        cells = []
        for ci, cname in enumerate(names):
            line = []
            for r in rows:
                vals = [rec["per_class"][ci]["acc"] for rec in self.cells[(dataset, r)]]
                mu, sd = mean_std(vals)
                line.append((mu, sd, len(vals)))
            cells.append(line)
        t = Table(f"Per-class accuracy on {dataset}", list(names), [(r, "") for r in rows], cells, self.notes,
                  self.n_plan)
        return t


def label_ratio_table(records: List[Dict], dataset: str, n_plan: int, notes: List[str]) -> Table:
    """ACC per label ratio on ``dataset``: rows = methods, columns = ratios."""
    by = defaultdict(list)
    for r in records:
        if r["dataset"] == dataset:
            by[(row_name(r), r.get("label_ratio", 1.0))].append(r["metrics"]["acc"])
    rows = sorted({k[0] for k in by})
    ratios = sorted({k[1] for k in by})
    cells = [[(*mean_std(by.get((r, q), [])), len(by.get((r, q), []))) for q in ratios] for r in rows]
    return Table(f"ACC per label ratio on {dataset}", rows, [(f"{q:.0%}", "") for q in ratios], cells, notes, n_plan)


def split_groups(records: Iterable[Dict]) -> Dict[Tuple[str, str, str], List[Dict]]:
    """Newest record per job, grouped by (protocol, backbone, weights)."""
    groups: Dict = defaultdict(list)
    for r in latest_per_job(records):
        groups[group_key(r)].append(r)
    return dict(sorted(groups.items()))


def build_tables(records: List[Dict], out_dir: Path, planned_seeds: Optional[int] = None,
                 method_order: Optional[Sequence[str]] = None,
                 kinds: Sequence[str] = ("per_dataset", "modality", "average", "overview")) -> List[Path]:
    """Write the default tables for ``records`` under ``out_dir``; return the written paths.

    Args:
        records: run records (see :mod:`medpt.benchmark.records`).
        out_dir: tables folder; one sub-folder per (protocol, backbone, weights).
        planned_seeds: seeds planned per cell (default: the most seeds any cell has).
        method_order: row order (default: sorted names).
        kinds: which table kinds to write (see module doc).
    """
    written: List[Path] = []
    for _, recs in split_groups(records).items():
        rs = RecordSet(recs, planned_seeds, method_order or ())
        gdir = Path(out_dir) / rs.group_dir
        if "per_dataset" in kinds:
            for ds, t in rs.per_dataset().items():
                written += t.write(gdir / ds)
        if "modality" in kinds:
            for g, t in rs.modality().items():
                written += t.write(gdir / f"modality_{_safe(g)}")
        if "average" in kinds and len(rs.datasets) > 1:
            written += rs.average().write(gdir / "average")
        if "overview" in kinds:
            written += rs.overview().write(gdir / "overview_acc")
    return written
