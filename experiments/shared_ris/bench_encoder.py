"""BEiT-3 base encoder alone: torchscale's BEiT3 (the official code) against risbench's, same input.

    python experiments/shared_ris/bench_encoder.py [--rounds 3] [--repeats 5] [--threads 2] [--bf16]

Each measurement runs in a fresh process (one implementation per process, alternating), times
``repeats`` no-grad forwards after one warm-up at 480 px (901 image tokens) + 20 text tokens, fp32,
``threads`` torch threads, and prints the median forward time per process (wall clock, and the CPU time
of all its threads, which moves less with the load of a shared machine); the summary is the median over
the rounds. torchscale needs the optional extra (``pip install --no-deps torchscale fairscale``).
The load average is printed before and after: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, statistics, sys, time, warnings
import torch
warnings.filterwarnings("ignore")
impl, threads, repeats, bf16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(threads)
torch.manual_seed(0)
if impl == "torchscale":
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3
    net = BEiT3(EncoderConfig(multiway=True, vocab_size=64010, img_size=480, patch_size=16, normalize_output=True,
                              no_output_layer=True, encoder_embed_dim=768, encoder_attention_heads=12,
                              encoder_ffn_embed_dim=3072, encoder_layers=12))
    call = lambda img, tok, pad: net(textual_tokens=tok, visual_tokens=img, text_padding_position=pad)
else:
    from risbench.models.common.beit3 import BEiT3
    net = BEiT3(size="base", img_size=480)
    call = lambda img, tok, pad: net(img, tok, pad)
net.eval()
img = torch.randn(1, 3, 480, 480)
tok = torch.randint(4, 64000, (1, 20))
pad = torch.zeros(1, 20, dtype=torch.bool)
times, cpu = [], []
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
    call(img, tok, pad)
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call(img, tok, pad)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
print(json.dumps({"impl": impl, "median_s": statistics.median(times), "times_s": times,
                  "median_cpu_s": statistics.median(cpu)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both (default fp32)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print(f"load average before: {os.getloadavg()}")
    medians: dict[str, list[float]] = {"torchscale": [], "risbench": []}
    cpu: dict[str, list[float]] = {"torchscale": [], "risbench": []}
    for round_ in range(args.rounds):
        for impl in medians:
            done = subprocess.run([sys.executable, "-c", CHILD, impl, str(args.threads), str(args.repeats),
                                   "1" if args.bf16 else "0"], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{impl} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            medians[impl].append(row["median_s"])
            cpu[impl].append(row["median_cpu_s"])
            print(f"round {round_ + 1} {impl:10s} median {row['median_s'] * 1000:7.0f} ms, CPU "
                  f"{row['median_cpu_s'] * 1000:7.0f} ms (forwards {', '.join(f'{t * 1000:.0f}' for t in row['times_s'])})"
                  f" load {os.getloadavg()[0]:.2f}")
            time.sleep(1)
    print(f"load average after: {os.getloadavg()}")
    for what, values in (("wall", medians), ("CPU", cpu)):
        summary = {impl: statistics.median(v) for impl, v in values.items()}
        print(f"median over rounds ({what}): torchscale {summary['torchscale'] * 1000:.0f} ms, risbench "
              f"{summary['risbench'] * 1000:.0f} ms, speed-up {summary['torchscale'] / summary['risbench']:.2f}x")


if __name__ == "__main__":
    main()
