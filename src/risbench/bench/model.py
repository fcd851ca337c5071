"""``python -m risbench.bench model [overrides]``: speed and memory of one model, fused vs reference path.

Two ways to run the same weights on the same input:

* ``reference`` -- explicit attention matmuls (the attention matrix is materialised) in fp32, which is how
  the papers' official code computes;
* ``risbench`` -- ``F.scaled_dot_product_attention`` (fused kernels) under bf16 autocast;
* ``fp32`` -- the same fused kernels in fp32 (``bench.variants=fp32,risbench``: risbench's own fp32 numbers).

For each it prints forward latency (inference) and train-step latency (forward + backward) at batch
``bench.batch_size``, and peak memory: CUDA peak allocation on a GPU, peak resident-set growth on a CPU
(each variant runs in its own subprocess so the peaks do not mix). Default: the paper-size model.
``bench.expressions_per_image=K`` makes each K consecutive samples one image with K expressions (as
evaluation visits a referent's expressions): a model whose vision encoder does not see the text (ReSTR)
then runs it once per image on the risbench path, while the reference runs it per sample.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from risbench.config import CONF_DIR, split_options
from risbench.models.common.attention import explicit_attention
from risbench.tasks.profile import dummy_batch

BENCH_DEFAULTS = ["scale=paper", "data=refcoco"]
VARIANTS = ("reference", "risbench", "fp32")


def _config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*BENCH_DEFAULTS, *overrides])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def run_variant(variant: str, overrides: list[str], batch_size: int, repeats: int,
                expressions_per_image: int = 1) -> dict:
    from hydra.utils import instantiate

    cfg = _config(overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab_size = int(cfg.tokenizer.vocab_size or 1000)
    net = instantiate(cfg.model, vocab_size=vocab_size, _convert_="all").to(device)
    batch = {key: value.to(device) for key, value in
             dummy_batch(batch_size, int(cfg.data.img_size), int(cfg.tokenizer.max_length), vocab_size).items()}
    reference = variant == "reference"
    bf16 = variant == "risbench"
    # K expressions of each image in a row, as evaluation visits a referent's expressions; only risbench's
    # path is told the images (`image_id`), the reference runs the vision encoder per sample like the papers' code
    image_of = torch.arange(batch_size, device=device) // expressions_per_image
    batch["image"] = batch["image"][image_of]
    if not reference:
        batch["image_id"] = image_of.tolist()
    attention = explicit_attention(net) if reference else contextlib.nullcontext()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    rss_before = _peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with attention:
        def infer():
            with torch.no_grad(), autocast:
                net.eval()
                net.mask_logits(net(batch))

        def train_step():
            net.train()
            with autocast:
                loss = net.loss(net(batch), batch)["loss"]
            loss.backward()
            net.zero_grad(set_to_none=True)

        forward_ms = _time(infer, repeats, device)
        train_ms = _time(train_step, max(1, repeats // 2), device)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else _peak_rss_mib() - rss_before
    return {"variant": variant, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "img_size": int(cfg.data.img_size), "batch_size": batch_size, "forward_ms": forward_ms,
            "train_step_ms": train_ms, "peak_memory_mib": peak,
            "memory_kind": "CUDA peak allocated" if device.type == "cuda" else "CPU peak RSS growth"}


def _positive_int(options: dict[str, str], key: str) -> int:
    value = options[key]
    if not value.isdigit() or int(value) < 1:
        sys.exit(f"risbench error: {key}={value} must be a whole number >= 1")
    return int(value)


def main(argv: list[str]) -> None:
    variant = None
    if argv[:1] == ["--variant"]:  # child process: run one variant, print JSON
        variant, argv = argv[1], argv[2:]
    options, overrides = split_options(argv, {"bench.batch_size": "1", "bench.repeats": "3",
                                              "bench.expressions_per_image": "1",
                                              "bench.variants": "reference,risbench"})
    batch_size, repeats, per_image = (_positive_int(options, key) for key in
                                      ("bench.batch_size", "bench.repeats", "bench.expressions_per_image"))
    variants = options["bench.variants"].split(",")
    if not variants or set(variants) - set(VARIANTS):
        sys.exit(f"risbench error: bench.variants={options['bench.variants']} must be a comma list of {list(VARIANTS)}")
    if variant:
        print(json.dumps(run_variant(variant, overrides, batch_size, repeats, per_image)))
        return
    rows = []
    for variant in variants:
        child = subprocess.run([sys.executable, "-m", "risbench.bench.model", "--variant", variant, *argv],
                               capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"bench variant {variant} failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    from rich.console import Console
    from rich.table import Table

    first = rows[0]
    table = Table(title=f"{' '.join(overrides) or 'default model'} at {first['img_size']}px, batch "
                        f"{first['batch_size']} ({per_image} expression(s) per image), {first['device']}")
    for column in ("path", "forward ms", "train step ms", f"peak MiB ({first['memory_kind']})"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["variant"], f"{row['forward_ms']:.1f}", f"{row['train_step_ms']:.1f}",
                      f"{row['peak_memory_mib']:.0f}")
    Console().print(table)
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
