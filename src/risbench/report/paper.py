"""The papers' published numbers (``experiments/<paper>/paper_results.yaml``), read into one table shape.

Schema of ``paper_results.yaml`` (what the report reads; unknown keys are kept for people, not read)::

    paper: sadlr                    # the paper's key (experiments/<paper>/)
    title: "..."                    # optional: title, venue
    tables:
      <table id>:                   # e.g. table4a; the report's files are <paper>_<table id>.md/.csv/.png
        caption: "..."
        experiment: ablation/sadlr_table4a   # the sweep whose jobs fill the table (`experiment=` of a job);
                                             # a list names several
        profile: ablation/sadlr_table3_profile   # optional: a mode=profile sweep giving params/GMACs per row
        dataset: refcoco            # flat tables: the dataset and split every metric is on (split: val if absent)
        split: val
        metric: oIoU                # per-dataset tables: the one metric of the `results` grid
        dataset_key: data           # per-dataset tables: the override/config choice naming a job's dataset
                                    # (default `data`; e.g. `row/restr_table1` when each row file picks it)
        modules: [fusion]           # optional: params/GMACs count these top-level modules only (profile by_module)
        plot: {x: model.head.iterations, label: "rounds n"}   # optional: a line plot over a row key or
                                    # override (numeric); `plot: false` for none. Without it a table whose
                                    # rows vary one numeric override (3+ values) is plotted over it.
        overrides: {...} / row: x   # optional: selects the jobs of this (sub-)table, as for rows below
        rows:
          - method: n=1             # the row's label (or `row`)
            overrides: {model.head.iterations: 1, model/base: lts}   # the knobs reproducing the row on top of
                                    # the table's experiment: dotted config keys or group choices
            row: l4_dec             # shorthand for overrides {row/<sweep>: l4_dec}, sweep = the experiment's
                                    # file name (conf/row/<sweep>/<row>.yaml, swept as +row/<sweep>=...)
            ours: true              # the paper's own method; reproducible by the sweep even without overrides
            default: true           # the paper's default setting (shown in notes)
            approximate: true       # an approximate re-implementation here (shown in notes)
            not_reproducible: why   # the paper's own row that no sweep can run (the reason is kept)
            results:                # flat tables: {metric: value}; per-dataset: {dataset: {split: value}}
              oIoU: 73.22           # metrics in percent: oIoU, mIoU, prec@0.5, ...
              gflops: 203.5         # complexity: params_m (millions), gmacs, gflops (fvcore's = multiply-adds,
                                    # i.e. GMACs; a paper counting 2 FLOPs per MAC writes gmacs = half)
              time_ms: 45.6         # any other number: shown as a paper-only column
            oIoU: 52.81             # metrics and complexity may also sit on the row itself (ReSTR's files)
            layers: 4               # any other scalar: a descriptor column (dcrf, layers, share, ...)
        datasets:                   # instead of rows: one sub-table per dataset (<table id>_<dataset>), each
          refcoco:                  # with its own split, selector (row/overrides) and rows; with `buckets`
            row: refcoco            # (expression lengths in words, the last open-ended) a row's `values`
            split: val              # are the metric per bucket (results.json "len1-2/oIoU", "len6+/oIoU")
            buckets: [[1, 2], [3, 3], [4, 5], [6, 20]]
            rows: [{method: ReSTR, ours: true, values: [72.38, 69.46, 61.19, 50.21]}]
                                    # (or `results: {len1-2: 72.38, len3-3: 69.46, ..., len6+: 50.21}`; a flat
                                    # table with `buckets` is one such sub-table)

A row is *reproducible* when it has ``overrides``, ``row`` or ``ours`` and no ``not_reproducible``: the report expects a job for it
and lists it as missing otherwise; other rows (the paper's baselines) are shown with the paper's numbers.
A job belongs to a table when its ``experiment`` is the table's (or its ``profile``), and to the row whose
overrides it satisfies (its ``.hydra/overrides.yaml``, else its resolved config choices and values); when
several rows fit, the one with the most overrides wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from risbench.errors import RisbenchError

METRIC = re.compile(r"^(oIoU|mIoU|prec@[0-9.]+)$")
BUCKET = re.compile(r"^len[0-9]+(-[0-9]+|\+)(/.*)?$")  # a length bucket's number ("len1-2", "len6+/oIoU")
HEADLINE_ORDER = ("oIoU", "mIoU")
COMPLEXITY = {"params_m": "params_m", "gmacs": "gmacs", "gflops": "gmacs"}  # paper key -> what we count
COMPLEXITY_LABELS = {"params_m": "params (M)", "gmacs": "GMACs"}
ROW_KEYS = {"method", "row", "overrides", "ours", "default", "approximate", "not_reproducible", "results",
            "values"}
TABLE_KEYS = {"caption", "experiment", "profile", "dataset", "split", "metric", "dataset_key", "modules", "plot",
              "overrides", "row", "rows", "datasets", "buckets", "img_size"}


def canonical(value) -> str:
    """A config value as one comparable string: 3, "3" and 3.0 are equal; so are true and "True"."""
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                return parsed
        value = parsed
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Column:
    """One metric on one split (and dataset, in per-dataset tables) of a paper table."""

    name: str  # header stem: "val oIoU", "refcoco testA oIoU", "val 1-2 words oIoU"
    split: str
    metric: str  # results.json key without the protocol prefix: "oIoU", "len1-2/oIoU"
    dataset: str | None = None  # per-dataset tables: the dataset this column is on
    label: str = ""  # short label for plots ("1-2 words", "oIoU")


@dataclass
class PaperRow:
    label: str
    overrides: dict[str, str]  # canonical key -> canonical value (the table's selector included)
    reproducible: bool
    paper: dict[str, float]  # Column.name -> the paper's value (percent)
    complexity: dict[str, float]  # params_m / gmacs -> the paper's value
    extras: dict[str, float]  # other numbers, paper-only (time_ms, ...)
    descriptors: dict[str, object]
    notes: list[str]


@dataclass
class PaperTable:
    paper: str
    id: str  # "table4a", "table2_refcoco"
    caption: str
    experiments: list[str]
    profile_experiments: list[str]
    selector: dict[str, str]
    kind: str  # flat | per_dataset | buckets
    columns: list[Column]
    rows: list[PaperRow]
    dataset: str | None = None
    dataset_key: str = "data"
    modules: list[str] | None = None
    plot: dict | None = None
    complexity: list[str] = field(default_factory=list)  # params_m / gmacs columns the paper has
    extras: list[str] = field(default_factory=list)
    descriptors: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the report cannot compare this table (e.g. an analysis table)

    @property
    def name(self) -> str:
        return f"{self.paper}_{self.id}"


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v).lstrip("/") for v in (value if isinstance(value, list) else [value])]


def _sweep_name(experiments: list[str]) -> str | None:
    return experiments[0].rsplit("/", 1)[-1] if experiments else None


def _selector(node: dict, sweep: str | None, where: str) -> dict[str, str]:
    overrides = node.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise RisbenchError(f"{where}.overrides must be a mapping of config keys to values, got {overrides!r}")
    selector = {override_key(key): canonical(value) for key, value in overrides.items()}
    if node.get("row") is not None:
        if sweep is None:
            raise RisbenchError(f"{where} has `row: {node['row']}` but its table names no `experiment`")
        selector[f"row/{sweep}"] = canonical(node["row"])
    return selector


def override_key(key: str) -> str:
    """``+row/x`` and ``++a.b`` name the same setting as ``row/x`` and ``a.b``."""
    return str(key).lstrip("+~")


def bucket_metric(buckets: list, index: int, metric: str) -> tuple[str, str]:
    """results.json key and label of a length bucket (the last bucket is open-ended, as the metric counts)."""
    lo, hi = buckets[index]
    if index == len(buckets) - 1:
        return f"len{lo}+/{metric}", f"{lo}+ words"
    return f"len{lo}-{hi}/{metric}", f"{lo}-{hi} words" if lo != hi else f"{lo} word{'s' if lo != 1 else ''}"


def _bucket_result(row: dict, key: str):
    """A bucket's number under `results`, keyed as results.json names it ("len1-2/oIoU") or without the
    metric ("len1-2")."""
    results = row.get("results") or {}
    return results.get(key, results.get(key.split("/")[0]))


def _row_numbers(row: dict) -> dict:
    """A row's numbers: `results` (flat tables) and the row's own metric/complexity keys."""
    numbers = dict(row.get("results") or {}) if not _is_grid(row.get("results")) else {}
    numbers = {key: value for key, value in numbers.items() if not BUCKET.match(str(key))}
    numbers.update({key: value for key, value in row.items()
                    if key not in ROW_KEYS and (METRIC.match(str(key)) or key in COMPLEXITY)})
    return numbers


def _is_grid(results) -> bool:
    return isinstance(results, dict) and any(isinstance(value, dict) for value in results.values())


def _notes(row: dict) -> list[str]:
    notes = [key for key in ("ours", "default", "approximate") if row.get(key)]
    return notes + [f"not reproducible: {row['not_reproducible']}"] if row.get("not_reproducible") else notes


def _label(row: dict, index: int) -> str:
    return str(row.get("method") or row.get("row") or f"row {index + 1}")


def _descriptors(row: dict) -> dict:
    return {key: value for key, value in row.items()
            if key not in ROW_KEYS and not METRIC.match(str(key)) and key not in COMPLEXITY
            and not isinstance(value, (dict, list))}


def _table(paper: str, table_id: str, node: dict, where: str, inherited: dict | None = None) -> PaperTable:
    node = {**(inherited or {}), **node}
    experiments = _as_list(node.get("experiment"))
    sweep = _sweep_name(experiments)
    selector = _selector(node, sweep, where)
    rows_in = node.get("rows") or []
    if not isinstance(rows_in, list):
        raise RisbenchError(f"{where}.rows must be a list of rows, got {type(rows_in).__name__}")
    buckets = node.get("buckets")
    if buckets:
        kind = "buckets"
    elif any(_is_grid(row.get("results")) for row in rows_in):
        kind = "per_dataset"
    else:
        kind = "flat"
    split = str(node.get("split") or "val")
    metric = str(node.get("metric") or "oIoU")
    columns: dict[str, Column] = {}
    rows: list[PaperRow] = []
    complexity, extras, descriptors = [], [], []
    for index, row in enumerate(rows_in):
        if not isinstance(row, dict):
            raise RisbenchError(f"{where}.rows[{index}] must be a mapping, got {row!r}")
        values: dict[str, float] = {}
        row_complexity, row_extras = {}, {}
        if kind == "buckets":
            given = row.get("values")
            for b in range(len(buckets)):
                key, label = bucket_metric(buckets, b, metric)
                column = columns.setdefault(key, Column(f"{split} {label} {metric}", split, key, label=label))
                value = given[b] if isinstance(given, list) and b < len(given) else _bucket_result(row, key)
                if value is not None:
                    values[column.name] = float(value)
        elif kind == "per_dataset":
            for dataset, splits in (row.get("results") or {}).items():
                for split_name, value in (splits or {}).items():
                    column = columns.setdefault(f"{dataset}/{split_name}", Column(
                        f"{dataset} {split_name} {metric}", str(split_name), metric, dataset=str(dataset),
                        label=f"{dataset} {split_name}"))
                    values[column.name] = float(value)
        numbers = _row_numbers(row)
        for key, value in numbers.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if METRIC.match(str(key)) and kind == "flat":
                column = columns.setdefault(key, Column(f"{split} {key}", split, str(key), label=str(key)))
                values[column.name] = float(value)
            elif key in COMPLEXITY:
                row_complexity[COMPLEXITY[key]] = float(value)
                complexity += [COMPLEXITY[key]] if COMPLEXITY[key] not in complexity else []
            elif not METRIC.match(str(key)):
                row_extras[str(key)] = float(value)
                extras += [str(key)] if str(key) not in extras else []
        row_descriptors = _descriptors(row)
        descriptors += [key for key in row_descriptors if key not in descriptors]
        reproducible = (bool(row.get("overrides") or row.get("row") is not None or row.get("ours"))
                        and not row.get("not_reproducible"))
        rows.append(PaperRow(_label(row, index), {**selector, **_selector(row, sweep, f"{where}.rows[{index}]")},
                             reproducible, values, row_complexity, row_extras, row_descriptors, _notes(row)))
    ordered = list(columns.values())
    if kind == "flat":  # the headline metrics first, then prec@X as the paper orders them
        ordered.sort(key=lambda column: HEADLINE_ORDER.index(column.metric) if column.metric in HEADLINE_ORDER
                     else len(HEADLINE_ORDER))
    table = PaperTable(paper, table_id, str(node.get("caption") or "").strip(), experiments,
                       _as_list(node.get("profile")), selector, kind, ordered, rows,
                       dataset=node.get("dataset"), dataset_key=override_key(node.get("dataset_key") or "data"),
                       modules=list(node["modules"]) if node.get("modules") else None,
                       plot=_plot(node, rows, kind), complexity=complexity, extras=extras, descriptors=descriptors)
    if not experiments:
        table.skipped = "no `experiment` names the sweep that reproduces it"
    elif not table.columns and not table.complexity:
        table.skipped = "no segmentation metric or complexity column (an analysis table: see the run's analysis.json)"
    return table


def _plot(node: dict, rows: list[PaperRow], kind: str) -> dict | None:
    plot = node.get("plot")
    if plot is False:
        return None
    if isinstance(plot, dict) and plot.get("x"):
        return {"x": str(plot["x"]), "label": str(plot.get("label") or plot["x"])}
    if kind == "buckets":
        return {"x": "buckets", "label": "expression length"}
    reproducible = [row for row in rows if row.reproducible]
    keys = {key for row in reproducible for key in row.overrides}
    if len(keys) == 1 and len(reproducible) >= 3:  # one numeric knob varied over 3+ rows: a curve
        (key,) = keys
        try:
            [float(row.overrides[key]) for row in reproducible if key in row.overrides]
        except ValueError:
            return None
        return {"x": key, "label": key}
    return None


def load_paper(path: Path) -> list[PaperTable]:
    """Every table of one ``paper_results.yaml``, sub-tables of ``datasets:`` flattened."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise RisbenchError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise RisbenchError(f"{path} has no `tables:` mapping (see risbench/report/paper.py for the schema)")
    paper = str(data.get("paper") or Path(path).parent.name)
    tables = []
    for table_id, node in data["tables"].items():
        where = f"{path}: tables.{table_id}"
        if not isinstance(node, dict):
            raise RisbenchError(f"{where} must be a mapping")
        if isinstance(node.get("datasets"), dict):
            shared = {key: value for key, value in node.items() if key in TABLE_KEYS - {"rows", "datasets"}}
            for dataset, sub in node["datasets"].items():
                tables.append(_table(paper, f"{table_id}_{dataset}", {"dataset": dataset, **sub},
                                     f"{where}.datasets.{dataset}", inherited=shared))
        else:
            tables.append(_table(paper, str(table_id), node, where))
    return tables


def load_papers(experiments_dir: Path) -> list[PaperTable]:
    """The tables of every ``<experiments_dir>/<paper>/paper_results.yaml``."""
    return [table for path in sorted(Path(experiments_dir).glob("*/paper_results.yaml")) for table in load_paper(path)]
