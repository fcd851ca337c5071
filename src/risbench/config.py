"""Where the Hydra config tree lives, its resolvers, the run-folder guard, and small helpers to read it."""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import typing
from pathlib import Path

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from risbench.errors import RisbenchError, check_can_create

# conf/ sits at the repository root (installed in editable mode, as the README says)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# where each dataset's files are in the two layouts: risbench's own under paths.data_dir, and the refer
# toolkit's data/ folder as it is (paths.refer_root); kind -> (under data_dir, under refer_root)
REFER_LAYOUTS = {
    "annotations": ("refer", "."),
    "coco_images": ("images/mscoco/train2014", "images/mscoco/images/train2014"),
    "saiapr_images": ("images/saiapr_tc-12", "images/saiapr_tc-12"),
}


def refer_layout(kind: str, data_dir: str, refer_root: str | None = None) -> str:
    """``${refer_layout:KIND,${paths.data_dir},${paths.refer_root}}``: the folder of KIND in the layout in use."""
    if kind not in REFER_LAYOUTS:
        raise ValueError(f"refer_layout: unknown kind {kind!r}; known: {sorted(REFER_LAYOUTS)}")
    own, refer = REFER_LAYOUTS[kind]
    if refer_root in (None, "", "None", "null"):
        return str(Path(data_dir) / own)
    return str(Path(refer_root) / refer)


def _synthref_dir(data_dir: str, params=None) -> str:
    """``${synthref_dir:${paths.data_dir},${data.synthref}}``: synthref's folder for these parameters."""
    from risbench.data.synthref import synthref_dir

    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return str(synthref_dir(data_dir, params))


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("refer_layout", refer_layout, replace=True)
    OmegaConf.register_new_resolver("synthref_dir", _synthref_dir, replace=True)


register_resolvers()


class FreshRunFolder(Callback):
    """Hydra callback: a run starts only in a folder it can write that holds nothing yet, unless
    ``overwrite=true``.

    It runs before Hydra writes anything (``.hydra/``, the log), so an earlier run's config, checkpoints and
    logs are never touched. DDP ranks other than 0 re-enter the same folder on purpose and are let through.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.run.dir), config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.sweep.dir), config, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: Path, config: DictConfig, key: str) -> None:
        try:
            check_can_create(folder, key, is_folder=True)
        except RisbenchError as error:
            print(f"\nrisbench error: {error}", file=sys.stderr)
            sys.exit(2)
        if config.get("overwrite", False) or any(int(os.environ.get(v, "0") or 0) > 0 for v in ("LOCAL_RANK", "RANK")):
            return
        if folder.is_dir() and any(folder.iterdir()):
            held = sorted(path.name for path in folder.iterdir())
            print(f"\nrisbench error: the run folder {folder} ({key}) already holds {held[:6]}"
                  f"{' ...' if len(held) > 6 else ''}; a run never writes over another run's files.\n"
                  f"  how to fix: leave {key} at its default (a new folder per run), choose an empty folder, "
                  "or pass overwrite=true to write over it", file=sys.stderr)
            sys.exit(2)


def split_options(argv: list[str], defaults: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Separate a command's own ``key=value`` options (those in ``defaults``) from Hydra overrides."""
    options, overrides = dict(defaults), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in options:
            options[key] = value
        else:
            overrides.append(arg)
    return options, overrides


CONFIG_ERRORS = (HydraException, OmegaConfBaseException)


def config_error_message(error: Exception) -> str:
    """A composition or override error as one message: Hydra's text without its search path (its internals),
    the OmegaConf cause it wraps (which names the key), and how to look."""
    text = str(error).split("Config search path:")[0].strip()
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip() not in text:
        text += "\n  " + str(cause).strip()
    key = getattr(error, "full_key", None)
    if key and f"full_key: {key}" not in text:
        text += f" (key: {key})"
    return (f"bad config or override: {text}\n  how to fix: check the override's key and value against the "
            "config (python -m risbench --cfg job prints it; each folder under conf/ lists a group's options)")


def compose_config(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """The project's Hydra config with command-line style overrides; a bad override is a `RisbenchError`."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except CONFIG_ERRORS as error:
        raise RisbenchError(config_error_message(error)) from None


@functools.lru_cache(maxsize=None)
def _validator(hint):
    """pydantic's lax validator of one type hint (numbers pass as text); None where pydantic has no schema."""
    from pydantic import ConfigDict, TypeAdapter

    try:
        return TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True, coerce_numbers_to_str=True))
    except Exception:  # a hint pydantic cannot build a schema for (a TypeVar, a protocol): not checked
        return None


def _plain_leaf(value):
    """A config leaf (or a list of leaves) as plain Python; None for nested nodes."""
    if isinstance(value, ListConfig):
        items = OmegaConf.to_container(value, resolve=True)
        return items if all(not isinstance(item, (dict, list)) for item in items) else None
    return None if isinstance(value, DictConfig) else value


def _type_hints(target_path: str) -> dict:
    from hydra.utils import get_object

    try:
        target = get_object(target_path)
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # an import error instantiate reports, or a forward reference only a type checker resolves
        return {}


def check_value_types(node, where: str, given: typing.Iterable[str] = (), recursive: bool = True,
                      target: str | None = None) -> None:
    """Every value of a ``_target_`` node (and of the nodes nested in it) against the target's type hints,
    by pydantic in lax mode: text where a number is wanted (``trainer.max_epochs=abc``) is one message naming
    the key here, not a TypeError deep inside the library later. Keys in ``given`` come from code, not the
    config; targets whose hints do not resolve, and values that do not resolve yet, are left to instantiate.
    ``target`` names the builder of a node that has no ``_target_`` (`BUILT_BY_CODE`)."""
    if not isinstance(node, DictConfig):
        return
    target = target or node.get("_target_")
    if target is None:
        return
    hints = _type_hints(target)
    for key in node:
        if key.startswith("_") or key in given or OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]
            plain = _plain_leaf(value)
        except InterpolationResolutionError:  # e.g. ${hydra:...} outside a run: instantiate reports it if it must
            continue
        if isinstance(value, DictConfig):
            if recursive and node.get("_recursive_", True):
                check_value_types(value, f"{where}.{key}")
            continue
        if key in hints and plain is not None:
            check_value_type(plain, hints[key], f"{where}.{key}", target)


def check_value_type(value, hint, key: str, target: str | None = None) -> None:
    """One value against one type hint (pydantic, lax): a `RisbenchError` naming ``key`` if it does not fit."""
    from pydantic import ValidationError

    validator = _validator(hint)
    if validator is None:
        return
    try:
        validator.validate_python(value)
    except ValidationError as error:
        reasons = "; ".join(dict.fromkeys(item["msg"] for item in error.errors()))
        wanted = (hint.__name__ if inspect.isclass(hint) else str(hint)).replace("typing.", "")
        raise RisbenchError(f"{key}={value!r} is not a valid value: {reasons}\n  how to fix: give {key} a value "
                            f"of type {wanted}{f' ({target})' if target else ''}") from None


# top-level nodes without a `_target_` whose keys are the arguments of a function risbench calls
BUILT_BY_CODE = {"tokenizer": "risbench.data.tokenizers.build_tokenizer"}


def check_config_types(cfg: DictConfig, where: str = "") -> None:
    """`check_value_types` on every ``_target_`` node of the composed config (and on `BUILT_BY_CODE`'s), before
    a task builds anything."""
    for key in cfg:
        value = cfg[key]
        if isinstance(value, DictConfig) and key != "hydra":
            full_key = f"{where}.{key}" if where else str(key)
            if "_target_" in value or full_key in BUILT_BY_CODE:
                check_value_types(value, full_key, target=BUILT_BY_CODE.get(full_key))
            else:
                check_config_types(value, full_key)


def instantiate_node(node, *, config_key: str | None = None, **kwargs):
    """``hydra.utils.instantiate`` whose failures are risbench's one message naming the config key.

    Values are checked against the target's type hints first (`check_value_types`). A `RisbenchError` raised
    inside a constructor comes out as it is; any other error (an unknown or missing argument, a bad value)
    becomes a `RisbenchError` that names the node and the cause. ``config_key`` names a node passed as a
    plain dict (which has lost its place in the config).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if isinstance(node, (dict, DictConfig)):
        checked = OmegaConf.create(node) if isinstance(node, dict) else node
        check_value_types(checked, config_key or checked._get_full_key(None) or "the config", given=kwargs,
                          recursive=kwargs.get("_recursive_", True))
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, RisbenchError):
            raise cause from None
        inner = re.search(r"full_key: (\S+)", str(error))
        inner = inner.group(1) if inner else None
        where = f"{config_key}.{inner}" if config_key and inner else config_key or inner or "the config"
        raise RisbenchError(f"cannot build {where} from the config: {type(cause).__name__}: {cause}\n"
                            f"  how to fix: check the keys and values under {where} (python -m risbench "
                            "--cfg job shows the composed config)") from None


def check_scale(model: str, scale: str, conf_dir: Path = CONF_DIR) -> None:
    """``scale=tiny`` needs the model's CPU-size file; without it the model would run at paper size."""
    if scale != "paper" and not (Path(conf_dir) / "model_scale" / f"{model}_{scale}.yaml").is_file():
        raise RisbenchError(f"scale={scale} needs conf/model_scale/{model}_{scale}.yaml, which does not exist: "
                            f"model={model} has no {scale} size.\n  how to fix: write that file (see the README, "
                            "\"Adding a paper\"), or run with scale=paper")
