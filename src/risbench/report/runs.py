"""Finding the jobs under the folders given to the report and reading what each ran and measured."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from risbench.errors import RisbenchError
from risbench.report.paper import canonical, override_key

MISSING = object()


@dataclass
class Job:
    """One run folder: its results.json and what its .hydra/ files say about the configuration."""

    path: Path
    results: dict
    overrides: dict[str, object]  # canonical key -> value, as given on the command line / by the sweeper
    choices: dict[str, object]  # config group -> choice (.hydra/hydra.yaml runtime.choices)
    config: dict  # .hydra/config.yaml, unresolved
    override_strings: list[str] = field(default_factory=list)
    profile: dict | None = None  # mode=profile's counts: results.json's, else profile.json's (older run folders)

    def value(self, key: str):
        """A setting of the job: an override as given, else its config group choice, else its config value."""
        key = override_key(key)
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        node = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return MISSING
            node = node[part]
        return node

    def has(self, key: str, value: str) -> bool:
        found = self.value(key)
        return found is not MISSING and canonical(found) == value

    @property
    def experiment(self) -> str | None:
        value = self.value("experiment")
        return None if value is MISSING or value is None else str(value).lstrip("/")

    @property
    def name(self) -> str:
        return str(self.results.get("experiment") or self.config.get("name") or "")

    @property
    def mode(self) -> str:
        return str(self.results.get("mode") or self.config.get("mode") or "train")

    @property
    def metrics(self) -> dict:
        return self.results.get("metrics") or {}

    @property
    def dataset(self) -> str | None:
        """The ``data=`` choice (conf/data/<name>.yaml), or the data node's dataset without hydra.yaml."""
        value = self.value("data")
        if isinstance(value, dict):
            value = value.get("dataset", MISSING)
        return None if value is MISSING or value is None else str(value)

    @property
    def scale(self) -> str | None:
        value = self.config.get("scale_name", self.choices.get("scale"))
        return None if value is None else str(value)

    @property
    def synthref_tiny(self) -> bool:
        return self.dataset == "synthref" and self.scale == "tiny"

    @property
    def data_label(self) -> str:
        return f"{self.dataset or '?'} ({self.scale or '?'})"

    @property
    def protocol(self) -> str:
        return str(((self.results.get("protocols") or {}).get("paper") or {}).get("name") or "paper")

    @property
    def wandb(self) -> dict | None:
        """The job's W&B logger node (``logger=wandb``), or None."""
        loggers = self.config.get("logger")
        node = loggers.get("wandb") if isinstance(loggers, dict) else None
        return node if isinstance(node, dict) else None

    def short_overrides(self, common: set[str]) -> str:
        """The overrides that tell this job from the others reported with it."""
        return " ".join(o for o in self.override_strings if o not in common) or "(none)"


INTACT = "is the run folder intact? Rerun the job, or leave its folder out of the report's paths"


def _yaml(path: Path, default):
    """A .hydra/ file, of the same type as ``default`` (a mapping or a list)."""
    if not path.is_file():
        return default
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RisbenchError(f"{path} is not valid YAML ({error}); {INTACT}") from None
    if value is None:
        return default
    if not isinstance(value, type(default)):
        raise RisbenchError(f"{path} holds a {type(value).__name__}, not the {type(default).__name__} Hydra writes; "
                            f"{INTACT}")
    return value


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RisbenchError(f"{path} could not be read ({error}); {INTACT}") from None
    if not isinstance(value, dict):
        raise RisbenchError(f"{path} holds a {type(value).__name__}, not the mapping risbench writes; {INTACT}")
    return value


def _check_number(path: Path, key: str, value) -> None:
    """A real number ("0.5" as text would sort and average wrongly, so it is refused, never converted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RisbenchError(f"{path}: {key} is {value!r}, not a number; {INTACT}")


def _check_mapping(path: Path, key: str, value) -> dict:
    if not isinstance(value, dict):
        raise RisbenchError(f"{path}: {key} is {value!r}, not a mapping; {INTACT}")
    return value


def _check_counts(path: Path, key: str, counts) -> None:
    """``params``-like nodes: {"total": n, ...} with numbers (or lists of module prefixes)."""
    for name, value in _check_mapping(path, key, counts).items():
        if name != "prefixes":
            _check_number(path, f"{key}.{name}", value)


def _check_profile(path: Path, profile, key: str = "profile") -> dict:
    _check_mapping(path, key, profile)
    for name in ("params", "params_excluding"):
        if profile.get(name) is not None:
            _check_counts(path, f"{key}.{name}", profile[name])
    for name in ("gmacs", "macs"):
        if profile.get(name) is not None:
            _check_number(path, f"{key}.{name}", profile[name])
    for module, counts in _check_mapping(path, f"{key}.by_module", profile.get("by_module") or {}).items():
        _check_counts(path, f"{key}.by_module.{module}", counts)
    return profile


def _check_results(path: Path, results: dict) -> None:
    """What the report reads of results.json: metrics per split, counts and times are numbers."""
    for split, metrics in _check_mapping(path, "metrics", results.get("metrics") or {}).items():
        for name, value in _check_mapping(path, f"metrics.{split}", metrics).items():
            _check_number(path, f"metrics.{split}.{name}", value)
    for name in ("wall_time_s", "steps"):
        if results.get(name) is not None:
            _check_number(path, name, results[name])
    if results.get("params") is not None:
        _check_counts(path, "params", results["params"])
    if results.get("profile"):
        _check_profile(path, results["profile"])
    overrides = results.get("overrides")
    if overrides is not None and not isinstance(overrides, list):
        raise RisbenchError(f"{path}: overrides is {overrides!r}, not a list; {INTACT}")


def parse_overrides(strings: list[str]) -> dict[str, object]:
    """``key=value`` command-line overrides as Hydra parses them (quoted values, lists, ``+`` prefixes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = {}
    parser = OverridesParser.create()
    for text in strings:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # a string Hydra cannot parse any more: keep it verbatim
            key, _, value = text.partition("=")
            parsed[override_key(key)] = value
            continue
        if override.is_delete():
            continue
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        value = override.value()
        parsed[override_key(key)] = value
    return parsed


def read_job(results_path: Path) -> Job:
    """A run folder's files, checked for what the report reads: a damaged file is one message naming it."""
    folder = results_path.parent
    results = _json(results_path)
    _check_results(results_path, results)
    hydra_dir = folder / ".hydra"
    strings = _yaml(hydra_dir / "overrides.yaml", [])
    if not (hydra_dir / "overrides.yaml").is_file():  # older run folders: results.json keeps the same list
        strings = list(results.get("overrides") or [])
    hydra_path = hydra_dir / "hydra.yaml"
    choices = _yaml(hydra_path, {})
    for key in ("hydra", "hydra.runtime", "hydra.runtime.choices"):
        choices = _check_mapping(hydra_path, key, choices.get(key.rsplit(".", 1)[-1]) or {})
    config = _yaml(hydra_dir / "config.yaml", {})
    profile = results.get("profile") or None
    profile_path = folder / "profile.json"
    if profile is None and profile_path.is_file():
        profile = _check_profile(profile_path, _json(profile_path), key="the profile")
    return Job(folder, results, parse_overrides([str(s) for s in strings]), dict(choices), config,
               [str(s) for s in strings], profile)


def is_report_folder(path: Path) -> bool:
    return path.name == "report" or (path.name.startswith("report-") and path.name[7:].isdigit())


def find_jobs(paths: list[Path]) -> list[Job]:
    """Every run folder (one with a results.json) under ``paths``, each once, in path order."""
    seen, jobs = set(), []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise RisbenchError(f"{root} does not exist; pass a run folder (outputs/<experiment>/<run>) or a "
                                "multirun folder (multirun/<sweep>/<date>_<time>)")
        candidates = [root / "results.json"] if (root / "results.json").is_file() else sorted(
            root.rglob("results.json"), key=lambda p: _natural(p.relative_to(root)))
        for path in candidates:
            if any(is_report_folder(parent) for parent in path.relative_to(root).parents):
                continue
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                jobs.append(read_job(path))
    return jobs


def _natural(path: Path) -> list:
    """Job folders 0, 1, ..., 10 in numeric order."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]
