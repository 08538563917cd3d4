#!/usr/bin/env python3
"""PyTorch's untiled SD VAE decode at any latent size: the reference of dreamwalk-bench's
tiled VAE cases (sdvae_270x480_tiled, sdvae_135x240_tiled), which ../shared/bench/
time_decoders.py does not time (its sizes are fixed).

diffusers `AutoencoderKL(**SD15_VAE_CONFIG).decode(z).sample`, float32, random weights
(diffusers' default init; the weights do not change the work), torch.inference_mode(),
`T` threads. The process's address space is capped (--max-gib, default half of MemTotal):
a decode that would need more fails with PyTorch's own allocation error instead of driving
a shared machine into swap or the OOM killer; the failure and the bytes it asked for are
reported as the case's error.

Protocol as time_decoders.py: the first call is a warm-up; if it takes longer than
--slow-threshold seconds it is the only run and is reported as the timing.

usage: time_vae_untiled.py --cases NAME --latent HxW [--threads 2] [--warmup 1] [--runs 1]
                           [--max-gib G] [--slow-threshold 60] [--json FILE]
"""
import argparse
import json
import platform
import resource
import statistics
import time


def mem_total_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 8.0


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="sdvae_untiled")
    ap.add_argument("--latent", required=True, help="HxW latent pixels, e.g. 270x480")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--max-gib", type=float, default=None)
    ap.add_argument("--slow-threshold", type=float, default=60.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    h, w = (int(v) for v in a.latent.split("x"))
    cap_gib = a.max_gib if a.max_gib is not None else mem_total_gib() / 2
    cap = int(cap_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    import torch
    import diffusers
    from diffusers import AutoencoderKL

    torch.set_num_threads(a.threads)
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "address_space_cap_gib": round(cap_gib, 1),
    }
    print(json.dumps(info), flush=True)
    result = {"case": a.cases, "latents": [1, 4, h, w], "image": [1, 3, 8 * h, 8 * w]}
    times, warm = [], []
    try:
        torch.manual_seed(0)
        model = AutoencoderKL(**config).eval()
        torch.manual_seed(1)
        z = torch.randn(1, 4, h, w)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.decode(z)
            warm.append(time.perf_counter() - t0)
            if warm[0] > a.slow_threshold:
                times = list(warm)
            else:
                for _ in range(a.warmup - 1):
                    t0 = time.perf_counter()
                    model.decode(z)
                    warm.append(time.perf_counter() - t0)
                for _ in range(a.runs):
                    t0 = time.perf_counter()
                    model.decode(z)
                    times.append(time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        result["error"] = (
            f"untiled decode of {h}x{w} latents fails within {cap_gib:.1f} GiB of address "
            f"space (peak RSS {vm_hwm_mib():.0f} MiB before it): {first}"
        )
    result.update(
        {
            "warmup_s": [round(x, 3) for x in warm],
            "all_s": [round(x, 3) for x in times],
            "min_s": min(times) if times else None,
            "median_s": statistics.median(times) if times else None,
            "peak_rss_mib": vm_hwm_mib(),
        }
    )
    line = result.get("error") or f"min {result['min_s']:.1f}s, peak RSS {result['peak_rss_mib']:.0f} MiB"
    print(f"{a.cases} {h}x{w}: {line}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "results": [result]}, f, indent=1)


if __name__ == "__main__":
    main()
