"""``python -m risbench.bench data [overrides]``: samples/s of the train loader with 0, 1 and 2 workers.

Runs at a 480 px input (the papers' size) unless ``data.img_size`` is given, with the data and tokenizer
of the composed config (default: synthref). Each setting is timed over ``BATCHES`` batches after one
warm-up batch (worker start-up is not counted).
"""

from __future__ import annotations

import sys
import time

from omegaconf import OmegaConf

from risbench.config import compose_config, instantiate_node
from risbench.data.tokenizers import build_tokenizer
from risbench.errors import RisbenchError

BATCHES = 20
WORKERS = (0, 1, 2)


def throughput(datamodule, num_workers: int, batches: int) -> float:
    """Train-loader samples per second with `num_workers` workers over `batches` batches after the first."""
    datamodule.num_workers = num_workers
    loader = iter(datamodule.train_dataloader())
    next(loader)  # untimed: workers start
    samples, started = 0, time.perf_counter()
    for _ in range(batches):
        samples += next(loader)["image"].shape[0]
    return samples / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    overrides = list(argv)
    if not any(o.startswith("data.img_size=") for o in overrides):
        overrides.append("data.img_size=480")
    try:
        cfg = compose_config(overrides)
        datamodule = instantiate_node(cfg.data, _recursive_=False)
        datamodule.prepare_data()
        tokenizer_cfg = OmegaConf.to_container(cfg.tokenizer, resolve=True)
        datamodule.set_tokenizer(build_tokenizer(**{k: v for k, v in tokenizer_cfg.items() if v is not None}))
        datamodule.setup("fit")
        available = len(datamodule.train_dataloader()) - 1  # the first batch is untimed
        if available < 1:
            raise RisbenchError(f"the train split gives {available + 1} batch of data.batch_size="
                                f"{cfg.data.batch_size}: nothing left to time after the first.\n  how to fix: a "
                                "smaller data.batch_size (or more training samples)")
    except RisbenchError as error:
        print(f"risbench bench data: {error}", file=sys.stderr)
        return 2
    batches = min(BATCHES, available)
    print(f"train loader, {datamodule.dataset}, {datamodule.transform.size} px {datamodule.transform.resize}, "
          f"batch {datamodule.batch_size}, {batches} batches timed after the first")
    for workers in WORKERS:
        print(f"  num_workers={workers}: {throughput(datamodule, workers, batches):8.1f} samples/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
