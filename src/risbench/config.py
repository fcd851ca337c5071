"""Where the Hydra config tree lives, its resolvers, the run-folder guard, and small helpers to read it."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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
    """Hydra callback: a run starts only in a folder that holds nothing yet, unless ``overwrite=true``.

    It runs before Hydra writes anything (``.hydra/``, the log), so an earlier run's config, checkpoints and
    logs are never touched. DDP ranks other than 0 re-enter the same folder on purpose and are let through.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.run.dir), config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(Path(config.hydra.sweep.dir), config, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: Path, config: DictConfig, key: str) -> None:
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


def instantiate_node(node, **kwargs):
    """``hydra.utils.instantiate`` whose failures are risbench's one message naming the config key.

    A `RisbenchError` raised inside a constructor comes out as it is; any other error (an unknown or
    missing argument, a bad value) becomes a `RisbenchError` that names the node (``full_key``) and the cause.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from risbench.errors import RisbenchError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, RisbenchError):
            raise cause from None
        key = re.search(r"full_key: (\S+)", str(error))
        where = key.group(1) if key else "the config"
        raise RisbenchError(f"cannot build {where} from the config: {type(cause).__name__}: {cause}\n"
                            f"  how to fix: check the keys and values under {where} (python -m risbench "
                            "--cfg job shows the composed config)") from None


def check_scale(model: str, scale: str, conf_dir: Path = CONF_DIR) -> None:
    """``scale=tiny`` needs the model's CPU-size file; without it the model would run at paper size."""
    from risbench.errors import RisbenchError

    if scale != "paper" and not (Path(conf_dir) / "model_scale" / f"{model}_{scale}.yaml").is_file():
        raise RisbenchError(f"scale={scale} needs conf/model_scale/{model}_{scale}.yaml, which does not exist: "
                            f"model={model} has no {scale} size.\n  how to fix: write that file (see the README, "
                            "\"Adding a paper\"), or run with scale=paper")
