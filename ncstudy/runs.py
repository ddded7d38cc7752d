"""Runs: one run's per-epoch log and what the run is, and the one loader of log files and folders.

A :class:`Run` is what ``ncstudy replay`` (the forecasters and their calibration), ``ncstudy
analyze`` (generic folders, presets, MLflow studies) and the trajectory corpus all read.

Logs are reference-format CSVs (:mod:`ncstudy.logs`; ``.csv.gz`` too), read by :func:`load_runs`
(files, or folders) and :func:`read_run` (one file). What a file *is* -- model, dataset, seed,
protocol -- comes from a **manifest** when one is given: a CSV with a ``file`` column (the log's
file name) and one column per attribute (``model``, ``dataset``, ``depth``, ``width``,
``activation``, ``weight_decay``, ``lr``, ``seed``, ``ce_epochs``, ``budget``, ...). ncstudy's
trajectory corpus carries one (``analysis/corpus/manifest.csv``, :func:`load_corpus`), and so does
the ``rupa2026`` preset for the author's logs (``ncstudy/analyze/presets/rupa2026_runs.csv``,
shipped with the package). A log the manifest does not list (or every log, without a manifest)
gets the attributes its file name spells out (:func:`attrs_from_filename`).
A study's trials get theirs from their flattened-config params (:func:`attrs_from_params`,
:data:`PARAM_MAP`: ``model.width`` -> ``width``); the MLflow reader
(:func:`ncstudy.adapters.mlflow.reader.read_study`) builds their runs. One name per attribute, whatever
the source.

A run's **group** (the calibration unit of the forecasters) follows one set of rules,
:func:`group_of`: ``model/dataset`` by default, or per ``cell``, ``file``, or ``all`` in one.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from ncstudy.deprecation import warn_renamed
from ncstudy.errors import InputError, LogFormatError
from ncstudy.logs import REFERENCE_COLUMNS, REQUIRED_COLUMNS, infer_phase, read_log
from ncstudy.records import EPOCH, PHASE, finite

__all__ = ["ATTR_KEYS", "GROUP_BY", "DEFAULT_GROUP", "LOG_SUFFIXES", "MLP_ONLY", "NUMERIC_ATTRS", "PARAM_MAP", "Run",
           "attr_key", "attrs_from_filename", "attrs_from_params", "convert_attr", "frame_records", "group_of",
           "load_corpus", "load_runs", "log_files", "log_stem", "numeric_log", "read_manifest", "read_run"]

GROUP_BY = ("model-dataset", "cell", "file", "all")
DEFAULT_GROUP = "default"
LOG_SUFFIXES = (".csv", ".csv.gz")


class Run:
    """One run: who it is, what it is, its per-epoch log, its group, and how an analysis treats it.

    * identity: ``run_id`` (unique within a load), ``source`` (file path, ``"<table>.csv row ..."``
      or ``"mlflow:<run id>"``), ``name`` (display name, e.g. the MLflow run name; default ``run_id``);
    * ``attrs``: what the run is (``model``, ``dataset``, ``depth``, ``seed``, ``budget``,
      ``ce_epochs``, ... -- a manifest row, the file name's tokens or an MLflow run's params,
      :func:`attrs_from_params`);
    * the per-epoch log, given either as ``records`` (dicts in epoch order, what the forecasters
      read) or as ``frame`` (a :func:`ncstudy.logs.read_log` DataFrame, what the analysis reads);
      the other form is derived on first use. A run with neither has no log (:attr:`has_log`);
    * ``group``: its calibration group (:func:`group_of`);
    * how an analysis treats it: ``origin`` (``log``, ``table``, ``mlflow-artifact``,
      ``mlflow-metrics``, ``mlflow-tags``), ``cell`` (unit of the relaxed fallback), ``rule``
      (``strict``, ``relaxed``, ``relaxed-fallback``; None = the analysis default), ``phase2_only``
      (None = the analysis default), ``given`` (tabulated ``t_nc``, ``fn_star``, ``test_acc``,
      ``threshold`` of a run without a log), ``experiments``, ``note`` and ``tags``.
    """

    def __init__(self, run_id: str, group: str = DEFAULT_GROUP,
                 records: Iterable[Mapping[str, Any]] | None = None, attrs: Mapping[str, Any] | None = None,
                 source: str = "", *, frame: pd.DataFrame | None = None, name: str | None = None,
                 origin: str = "log", cell: str | None = None, rule: str | None = None,
                 phase2_only: bool | None = None, given: Mapping[str, Any] | None = None,
                 experiments: Sequence[str] = (), note: str = "", tags: Mapping[str, str] | None = None) -> None:
        if records is not None and frame is not None:
            raise ValueError("Run: give the log as records or as frame, not both")
        self.run_id = run_id
        self.group = group
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.source = source
        self.name = name
        self._records: list[dict[str, Any]] | None = None if records is None else [dict(r) for r in records]
        self._frame = frame
        self.origin = origin
        self.cell = cell
        self.rule = rule
        self.phase2_only = phase2_only
        self.given: dict[str, Any] | None = None if given is None else dict(given)
        self.experiments: tuple[str, ...] = tuple(experiments)
        self.note = note
        self.tags: dict[str, str] = dict(tags or {})

    def __repr__(self) -> str:
        n = len(self._records) if self._records is not None else (len(self._frame) if self._frame is not None else 0)
        return f"Run({self.run_id!r}, group={self.group!r}, source={self.source!r}, {n} evaluation(s))"

    @property
    def has_log(self) -> bool:
        """Whether the run has a per-epoch log (a run from a summary table or MLflow tags has none)."""
        return self._records is not None or self._frame is not None

    @property
    def records(self) -> list[dict[str, Any]]:
        """The log's rows in epoch order, NaN read as None (``[]`` for a run without a log)."""
        if self._records is None:
            if self._frame is None:
                return []
            self._records = frame_records(self._frame)
        return self._records

    @property
    def frame(self) -> pd.DataFrame | None:
        """The log as a DataFrame, one row per evaluation (None for a run without a log)."""
        if self._frame is None and self._records is not None:
            self._frame = _numbers(pd.DataFrame(self._records))
        return self._frame

    def attr(self, key: str) -> Any:
        """``attrs[key]``, else the attribute a flattened-config key names (``model.width`` ->
        ``width``, :func:`attr_key`), else None."""
        return self.attrs[key] if key in self.attrs else self.attrs.get(attr_key(key))

    @property
    def budget(self) -> int | None:
        """The run's full epoch budget (``attrs['budget']``), when known."""
        b = self.attrs.get("budget")
        return int(float(b)) if finite(b) else None

    # Names of the two run types this one replaces (issue 26): read, with a warning.
    @property
    def meta(self) -> dict[str, Any]:
        warn_renamed("Trajectory.meta", "ncstudy.runs.Run.attrs")
        return self.attrs

    @property
    def trajectory(self) -> pd.DataFrame | None:
        warn_renamed("RunInput.trajectory", "ncstudy.runs.Run.frame")
        return self.frame


def frame_records(df: pd.DataFrame, ce_epochs: int | None = None) -> list[dict[str, Any]]:
    """Rows of a :func:`ncstudy.logs.read_log` frame as records (NaN read as None); without a
    ``phase`` column and with ``ce_epochs`` given, phase = 1 up to ``ce_epochs`` and 2 after."""
    if PHASE not in df.columns and ce_epochs is not None:
        df = infer_phase(df, ce_epochs)
    recs = []
    for row in df.to_dict("records"):
        r = _nan_as_none(row)
        r[EPOCH] = int(r[EPOCH])
        recs.append(r)
    return recs


def _nan_as_none(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row with its NaN cells (pandas' empty cells) as None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def numeric_log(df: pd.DataFrame, where: str | Path) -> pd.DataFrame:
    """A log's metric columns as numbers, sorted by epoch; :class:`LogFormatError` naming ``where``
    for a log without rows or with an epoch that is missing or not a number."""
    if df.empty:
        raise LogFormatError(f"{where}: no rows (a log needs one row per evaluation)")
    df = _numbers(df)
    if df[EPOCH].isna().any():
        raise LogFormatError(f"{where}: column epoch has missing or non-numeric values")
    return df.sort_values(EPOCH).reset_index(drop=True)


def _numbers(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with the reference columns, and the other columns whose every value is a number, as numbers."""
    df = df.copy()
    for c in df.columns:
        if c in REFERENCE_COLUMNS or df[c].dtype == object:
            converted = pd.to_numeric(df[c], errors="coerce")
            if c in REFERENCE_COLUMNS or converted.notna().sum() == df[c].notna().sum():
                df[c] = converted
    return df


# ---------------------------------------------------------------------------------------------
# What a run is: its attributes and its group
# ---------------------------------------------------------------------------------------------
_Conv = Callable[[str], Any]
_TOKEN_RULES: list[tuple[re.Pattern[str], str, _Conv]] = [
    (re.compile(r"^s(\d+)$"), "seed", int),
    (re.compile(r"^seed(\d+)$"), "seed", int),
    (re.compile(r"^depth(\d+)$"), "depth", int),
    (re.compile(r"^width(\d+)$"), "width", int),
    (re.compile(r"^wd([0-9.ep+-]+)$"), "weight_decay", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^lr([0-9.ep+-]+)$"), "lr", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^alpha([0-9.p]+)$"), "intervention_alpha", lambda s: float(s.replace("p", "."))),
    (re.compile(r"^act([A-Za-z_]+)$"), "activation", str.lower),
]


def attrs_from_filename(stem: str) -> dict[str, Any]:
    """Attributes a file name spells out: ``width128_s0`` -> width 128, seed 0, group ``width128``.

    Tokens are separated by ``_``: ``s<N>``/``seed<N>``, ``depth<N>``, ``width<N>``, ``wd<x>``,
    ``lr<x>``, ``alpha<x>`` (``p`` may stand for the decimal point: ``wd0p0005``) and
    ``act<Name>``. ``group`` is the name without its seed token (the runs of one configuration).
    """
    attrs: dict[str, Any] = {}
    rest = []
    for tok in stem.split("_"):
        is_seed = False
        for rx, key, conv in _TOKEN_RULES:
            m = rx.match(tok)
            if m:
                try:
                    attrs[key] = conv(m.group(1))
                except ValueError:
                    continue
                is_seed = key == "seed"
                break
        if not is_seed:
            rest.append(tok)
    attrs["group"] = "_".join(rest) or stem
    return attrs


# What a run of a study is, from its flattened config (a study's MLflow params, docs/CONTRACTS.md):
# the keys the analysis describes runs by, under the names a manifest and a file name use too.
ATTR_KEYS = ("model", "dataset", "depth", "width", "activation", "weight_decay", "lr", "seed",
             "intervention_alpha")
NUMERIC_ATTRS = {"depth", "width", "weight_decay", "lr", "seed", "intervention_alpha"}
PARAM_MAP = {
    "model.name": "model", "data.name": "dataset", "model.depth": "depth", "model.width": "width",
    "model.activation": "activation", "optimizer.weight_decay": "weight_decay",
    "optimizer.lr": "lr", "seed": "seed", "intervention_alpha": "intervention_alpha",
}
MLP_ONLY = ("depth", "width", "activation")  # blanked for other models: the flattened config still has them
EPOCH_PARAMS = ("ce_epochs", "mse_epochs")  # the protocol's two phases; budget = their sum
_INTEGER_ATTRS = {"depth", "width", "seed", *EPOCH_PARAMS}


def convert_attr(key: str, value: Any) -> Any:
    """An attribute's value from its text (an MLflow param): None for an empty or null one, a number
    for a numeric attribute (an int for depth, width, seed and the epoch counts), else the text."""
    if value is None:
        return None
    s = str(value).strip()
    if s in ("", "None", "none", "null", "nan", "NaN"):
        return None
    if key in NUMERIC_ATTRS or key in _INTEGER_ATTRS:
        try:
            x = float(s)
        except ValueError:
            return s
        return int(x) if key in _INTEGER_ATTRS and x.is_integer() else x
    return s


def attrs_from_params(params: Mapping[str, Any], fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run is, from its flattened config (``model.width`` ...; a study's MLflow params).

    The keys of :data:`PARAM_MAP` under their attribute names (:data:`ATTR_KEYS`: ``width``, ...),
    typed (:func:`convert_attr`); ``model``/``dataset`` from ``fallback`` (a trial's tags) when the
    params lack them; :data:`MLP_ONLY` blanked for other models; ``ce_epochs``, ``mse_epochs`` as
    ints and ``budget`` their sum; every other param under its own dotted name, as given. One name
    per quantity: ``width`` is never also ``model.width`` (:func:`attr_key` maps the dotted name).
    """
    attrs: dict[str, Any] = {}
    for p, a in PARAM_MAP.items():
        if p in params:
            attrs[a] = convert_attr(a, params[p])
    for a in ("model", "dataset"):
        attrs.setdefault(a, convert_attr(a, (fallback or {}).get(a)))
    if attrs.get("model") not in (None, "mlp"):
        for k in MLP_ONLY:
            attrs[k] = None
    for k in EPOCH_PARAMS:
        if k in params:
            attrs[k] = convert_attr(k, params[k])
    if all(isinstance(attrs.get(k), int) for k in EPOCH_PARAMS):
        attrs["budget"] = attrs["ce_epochs"] + attrs["mse_epochs"]
    attrs.update((k, v) for k, v in params.items() if k not in PARAM_MAP and k not in EPOCH_PARAMS)
    return attrs


def attr_key(key: str) -> str:
    """The attribute a flattened-config key names (``model.width`` -> ``width``), else ``key``."""
    return PARAM_MAP.get(key, key)


def group_of(attrs: Mapping[str, Any], group_by: str = "model-dataset", run_id: str | None = None) -> str:
    """A run's calibration group: ``model/dataset`` (``default`` when neither is known), or one
    per ``cell`` (``model/dataset/<cell attribute or run id>``), per ``file`` (the run id) or ``all``."""
    if group_by not in GROUP_BY:
        raise InputError(f"group_by must be one of {', '.join(GROUP_BY)}")
    rid = run_id if run_id is not None else attrs.get("run_id")
    if group_by == "all":
        return "all"
    if group_by == "file":
        return str(rid)
    model, data = _text(attrs.get("model")), _text(attrs.get("dataset"))
    base = f"{model or '?'}/{data or '?'}" if (model or data) else DEFAULT_GROUP
    if group_by == "cell":
        return f"{base}/{attrs.get('cell') or rid}"
    return base


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else str(v)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def log_stem(path: str | Path) -> str:
    """A log's name without ``.csv``/``.csv.gz``: its run id."""
    name = Path(path).name
    for suf in LOG_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def log_files(folder: str | Path) -> list[Path]:
    """The ``*.csv``/``*.csv.gz`` files of a folder, by name."""
    return sorted(f for f in Path(folder).iterdir() if f.is_file() and f.name.endswith(LOG_SUFFIXES))


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """``log stem -> attributes`` from a manifest CSV (see the module docs)."""
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except FileNotFoundError:
        raise InputError(f"{p}: manifest not found") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable manifest CSV ({type(e).__name__}: {e})") from None
    if "file" not in df.columns:
        raise InputError(f"{p}: a manifest needs a 'file' column (the log's file name) and attribute columns")
    out = {}
    for row in df.to_dict("records"):
        out[log_stem(row["file"])] = {k: v for k, v in _nan_as_none(row).items() if k != "file"}
    return out


Manifest = Mapping[str, Mapping[str, Any]]


def read_run(path: str | Path, attrs: Mapping[str, Any] | None = None, *, group: str | None = None,
             group_by: str = "model-dataset", ce_epochs: int | None = None) -> Run:
    """One log file as a :class:`Run` (:class:`LogFormatError` naming the file when it is not a log).

    ``attrs``: what the run is (default: the file name's tokens, :func:`attrs_from_filename`);
    ``ce_epochs`` (default ``attrs['ce_epochs']``) labels the phases of a two-phase log written
    without a ``phase`` column; ``group`` overrides the group :func:`group_of` gives by ``group_by``.
    """
    p = Path(path)
    stem = log_stem(p)
    a = dict(attrs) if attrs is not None else attrs_from_filename(stem)
    ce = ce_epochs if ce_epochs is not None else (int(float(a["ce_epochs"])) if finite(a.get("ce_epochs")) else None)
    frame = numeric_log(read_log(p, REQUIRED_COLUMNS, phase1_epochs=ce), p)
    return Run(stem, group or group_of(a, group_by, stem), attrs=a, source=str(p), frame=frame, origin="log")


def load_runs(paths: str | Path | Iterable[str | Path], manifest: Manifest | str | Path | None = None, *,
              group: str | None = None, group_by: str = "model-dataset", ce_epochs: int | None = None,
              skipped: list[str] | None = None) -> list[Run]:
    """Reference-format logs as runs: files, or folders (every ``*.csv``/``*.csv.gz`` in it).

    ``manifest`` (a mapping from :func:`read_manifest`, or its path) gives the attributes of the
    logs it lists; the others get their file name's (:func:`attrs_from_filename`). In a folder, a
    CSV that is not a log (a summary table, an empty file) is skipped and its reason appended to
    ``skipped`` when that list is given. A file named explicitly that is not a log raises
    :class:`LogFormatError`; a path that does not exist, :class:`InputError`. ``group`` puts every
    run in one group; otherwise ``group_by`` chooses the rule (:func:`group_of`). Run ids are the
    file names without their suffix, or the paths where two folders hold the same name.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    table = read_manifest(manifest) if isinstance(manifest, (str, Path)) else (manifest or {})

    def one(f: Path) -> Run:
        row = table.get(log_stem(f))
        return read_run(f, None if row is None else row, group=group, group_by=group_by, ce_epochs=ce_epochs)

    out: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if p.is_dir():
            for f in log_files(p):
                try:
                    out.append(one(f))
                except LogFormatError as e:
                    if skipped is not None:
                        skipped.append(str(e))
        else:
            out.append(one(p))
    ids = [r.run_id for r in out]
    dup = {i for i in ids if ids.count(i) > 1}
    for r in out:  # same file name in two folders: keep run ids unique
        if r.run_id in dup:
            r.run_id = r.source
    return out


def load_corpus(folder: str | Path, group_by: str = "model-dataset") -> list[Run]:
    """ncstudy's trajectory corpus (``analysis/corpus``): ``manifest.csv`` + ``runs/*.csv.gz``."""
    d = Path(folder)
    return load_runs([d / "runs"], d / "manifest.csv", group_by=group_by)
