"""Where the Hydra config tree lives, and small helpers to read it."""

from __future__ import annotations

import re
from pathlib import Path

# conf/ sits at the repository root (installed in editable mode, as the README says)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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
