"""``python -m risbench.bench model [overrides]``: speed and memory of one model, measured like for like.

Every cell (precision x mode) runs in ``bench.processes`` fresh processes; each builds the model (random
weights, paper size by default: ``scale=paper``), runs ``bench.warmup`` untimed and ``bench.repeats``
timed iterations on the same input, and reports its median; a cell's figure is the median of the
per-process medians, with the min..max of every timed iteration beside it.

* precisions: ``fp32`` and ``bf16`` (autocast), risbench's default path in both (fused
  ``scaled_dot_product_attention``; Swin's windows use explicit matmuls in bf16 training on CPU);
  ``bench.path=reference`` switches every attention to explicit matmuls (what FLOP counters see), for
  checking FLOP tables, not as the baseline of a speed claim;
* modes: ``forward`` (eval, no_grad, forward + mask logits), ``train_step`` (train mode, forward + loss +
  backward) and ``optimizer_step`` (AdamW's step alone, after a backward);
* memory: CPU = peak resident set of the cell's fresh process (build included), GPU =
  ``torch.cuda.max_memory_allocated``; GPU times come from CUDA events after a synchronize.

MACs (forward, and forward + backward for the train step; `risbench.profiling`, explicit attention) are
counted once, so each cell also says its rate (GMAC/s). ``bench.json`` goes to ``bench.out`` (default
``outputs/bench/<model>/<date>_<time>``, a new folder every time). The input is ``dummy_batch``:
batch ``bench.batch_size`` at ``data.img_size`` with ``tokenizer.max_length`` real tokens.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from risbench.config import check_config_types, compose_config, split_options
from risbench.errors import RisbenchError, check_can_create
from risbench.models.common.attention import explicit_attention
from risbench.tasks.profile import dummy_batch

BENCH_DEFAULTS = ["scale=paper", "data=refcoco"]
PRECISIONS = ("fp32", "bf16")
MODES = ("forward", "train_step", "optimizer_step")
OPTIONS = {"bench.batch_size": "1", "bench.warmup": "2", "bench.repeats": "5", "bench.processes": "3",
           "bench.precisions": ",".join(PRECISIONS), "bench.modes": ",".join(MODES), "bench.path": "risbench",
           "bench.expressions_per_image": "1", "bench.out": ""}


def build(overrides: list[str], batch_size: int, expressions_per_image: int, device: torch.device):
    """The configured model (random weights) and its input batch on ``device``."""
    from risbench.tasks.common import build_net

    cfg = compose_config([*BENCH_DEFAULTS, *overrides])
    vocab_size = int(cfg.tokenizer.vocab_size or 1000)
    net = build_net(cfg, vocab_size).to(device)
    batch = {key: value.to(device) for key, value in
             dummy_batch(batch_size, int(cfg.data.img_size), int(cfg.tokenizer.max_length), vocab_size).items()}
    # K expressions of each image in a row, as evaluation visits a referent's expressions
    image_of = torch.arange(batch_size, device=device) // expressions_per_image
    batch["image"] = batch["image"][image_of]
    batch["image_id"] = image_of.tolist()
    return cfg, net, batch


class Timer:
    """Wall time on CPU; CUDA events (after a synchronize) on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000


def run_cell(precision: str, mode: str, overrides: list[str], batch_size: int, warmup: int, repeats: int,
             path: str = "risbench", expressions_per_image: int = 1) -> dict:
    """One cell in this process: per-iteration times (ms) and this process's peak memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg, net, batch = build(overrides, batch_size, expressions_per_image, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-6,
                                  fused=device.type == "cuda")

    def forward():
        with torch.no_grad(), autocast:
            net.mask_logits(net(batch))

    def backward():
        with autocast:
            loss = net.loss(net(batch), batch)["loss"]
        loss.backward()

    def train_step():
        net.zero_grad(set_to_none=True)
        backward()

    step = {"forward": forward, "train_step": train_step, "optimizer_step": optimizer.step}[mode]
    net.train(mode != "forward")
    if mode == "optimizer_step":
        backward()  # gradients to step with (kept: every step sees the same ones)
    timer = Timer(device)
    with explicit_attention(net) if path == "reference" else contextlib.nullcontext():
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = [timer(step) for _ in range(repeats)]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"precision": precision, "mode": mode, "times_ms": times, "peak_memory_mib": peak,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "img_size": int(cfg.data.img_size), "batch_size": batch_size}


def count_cell_macs(overrides: list[str], batch_size: int, expressions_per_image: int) -> dict:
    """MACs of one forward and of one forward + backward (train step), counted with explicit attention."""
    from torch.utils.flop_counter import FlopCounterMode

    from risbench.profiling import count_macs

    _, net, batch = build(overrides, batch_size, expressions_per_image, torch.device("cpu"))
    forward, _ = count_macs(net, batch)
    counter = FlopCounterMode(display=False)
    net.train()
    with explicit_attention(net), counter:
        net.loss(net(batch), batch)["loss"].backward()
    return {"forward": forward, "train_step": counter.get_total_flops() // 2}


def summarise(cells: list[dict], macs: dict) -> dict:
    """Median of per-process medians, min..max of every iteration, rate where MACs are known."""
    first = cells[0]
    medians = [statistics.median(cell["times_ms"]) for cell in cells]
    every = [t for cell in cells for t in cell["times_ms"]]
    row = {"precision": first["precision"], "mode": first["mode"], "median_ms": statistics.median(medians),
           "min_ms": min(every), "max_ms": max(every), "process_medians_ms": medians,
           "peak_memory_mib": statistics.median(cell["peak_memory_mib"] for cell in cells)}
    if first["mode"] in macs:
        row["gmacs"] = macs[first["mode"]] / 1e9
        row["gmac_per_s"] = row["gmacs"] / (row["median_ms"] / 1000)
    return row


def _positive_int(options: dict[str, str], key: str) -> int:
    value = options[key]
    if not value.isdigit() or int(value) < 1:
        raise RisbenchError(f"{key}={value} must be a whole number >= 1")
    return int(value)


def _choices(options: dict[str, str], key: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v for v in options[key].split(",") if v]
    if not values or any(v not in allowed for v in values):
        raise RisbenchError(f"{key}={options[key]} must be a comma-separated subset of {','.join(allowed)}")
    return values


def parse(argv: list[str]) -> tuple[dict, list[str]]:
    options, overrides = split_options(argv, OPTIONS)
    parsed = {key.removeprefix("bench."): _positive_int(options, key) for key in
              ("bench.batch_size", "bench.warmup", "bench.repeats", "bench.processes", "bench.expressions_per_image")}
    parsed["precisions"] = _choices(options, "bench.precisions", PRECISIONS)
    parsed["modes"] = _choices(options, "bench.modes", MODES)
    parsed["path"] = _choices(options, "bench.path", ("risbench", "reference"))[0]
    parsed["out"] = options["bench.out"]
    return parsed, overrides


def out_dir(option: str, overrides: list[str]) -> Path:
    if option:
        return Path(option)
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "default")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return Path("outputs") / "bench" / model / stamp


def child_main(argv: list[str]) -> None:
    """A child process: one cell (``--cell PRECISION MODE``) or the MACs (``--macs``), JSON on the last line."""
    try:
        if argv[0] == "--cell":
            precision, mode = argv[1], argv[2]
            options, overrides = parse(argv[3:])
            print(json.dumps(run_cell(precision, mode, overrides, options["batch_size"], options["warmup"],
                                      options["repeats"], options["path"], options["expressions_per_image"])))
        else:
            options, overrides = parse(argv[1:])
            print(json.dumps(count_cell_macs(overrides, options["batch_size"], options["expressions_per_image"])))
    except RisbenchError as error:  # a user mistake: one message, exit 2 (the parent passes it on)
        print(f"risbench error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    if argv[:1] in (["--cell"], ["--macs"]):
        child_main(argv)
        return 0
    try:
        options, overrides = parse(argv)
        check_config_types(compose_config([*BENCH_DEFAULTS, *overrides]))  # one message before any folder is made
        folder = out_dir(options["out"], overrides)
        if folder.exists():  # checked before minutes of measuring; never written over
            raise RisbenchError(f"bench.out={folder} exists already (an earlier measurement is never written over)"
                                ".\n  how to fix: give another bench.out, or move that folder away")
        check_can_create(folder, "bench.out", is_folder=True)
    except RisbenchError as error:
        print(f"risbench error: {error}", file=sys.stderr)
        return 2
    macs = _child(["--macs", *argv])
    rows = []
    for precision in options["precisions"]:
        for mode in options["modes"]:
            cells = [_child(["--cell", precision, mode, *argv]) for _ in range(options["processes"])]
            rows.append(summarise(cells, macs))
            print(f"{precision:>5} {mode:<15} {rows[-1]['median_ms']:9.1f} ms", flush=True)
    report = {"overrides": overrides, "options": options, "macs": macs, "device": cells[0]["device"],
              "threads": cells[0]["threads"], "img_size": cells[0]["img_size"], "rows": rows,
              "protocol": "fresh process per cell and repeat; warm-up iterations untimed; median of "
                          "per-process medians; CPU memory = peak RSS of the process"}
    folder.mkdir(parents=True, exist_ok=False)  # only now: a failed measurement leaves no empty folder
    (folder / "bench.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"written to {folder / 'bench.json'}")
    return 0


def _child(args: list[str]) -> dict:
    child = subprocess.run([sys.executable, "-m", "risbench.bench.model", *args], capture_output=True, text=True)
    if child.returncode == 2:
        sys.stderr.write(child.stderr[child.stderr.find("risbench error:"):])
        sys.exit(2)
    if child.returncode != 0:
        sys.exit(f"bench {' '.join(args[:3])} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{' '.join(report['overrides']) or 'default model'} at {report['img_size']}px, "
                        f"{report['device']}, {report['threads']} threads")
    for column in ("precision", "mode", "median ms", "min..max ms", "GMACs", "GMAC/s", "peak MiB"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(row["precision"], row["mode"], f"{row['median_ms']:.1f}",
                      f"{row['min_ms']:.0f}..{row['max_ms']:.0f}", f"{row.get('gmacs', 0):.1f}" if "gmacs" in row
                      else "-", f"{row['gmac_per_s']:.1f}" if "gmac_per_s" in row else "-",
                      f"{row['peak_memory_mib']:.0f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
