"""CPU-encode -> CUDA-decode check (run on a machine with a GPU; prints a table).

Encodes frames on the CPU with 1 torch thread, decodes them on CUDA alone and in a batch, and
compares ŷ bit for bit and the images pixel by pixel against the CPU decoder.

    python scripts/check_cuda_exact.py --base B.icmpkg [--enhancement E.icmpkg] [IMAGES...]

Without packages it trains a small base for ``--steps`` steps first (realistic scale spread),
with the checkerboard spatial context if ``--spatial-context`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def _frames(paths: list[str]) -> list[np.ndarray]:
    from PIL import Image

    if paths:
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def _train_base(steps: int, spatial_context: bool = False) -> Path:
    from icm_codec import CodecConfig, create_model, save_package
    from icm_codec.training import fit_steps

    torch.manual_seed(0)
    imgs = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in _frames([])]
    model = create_model(CodecConfig(model_id="cuda-check", spatial_context=spatial_context))
    fit_steps(model, imgs, steps, lmbda=0.05, lr=3e-4)
    model.freeze()
    path = Path(tempfile.mkdtemp()) / "base.icmpkg"
    save_package(model, path)
    return path


def main() -> int:
    from icm_codec import ScalableCodec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="*")
    ap.add_argument("--base")
    ap.add_argument("--enhancement")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--spatial-context", action="store_true",
                    help="the self-trained base codes its slices in two checkerboard passes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    base = Path(args.base) if args.base else _train_base(args.steps, args.spatial_context)
    torch.set_num_threads(1)
    cpu = ScalableCodec.load(base, args.enhancement, "cpu")
    frames = [f[:480, :640] for f in _frames(args.images)]
    layers = [cpu.encode_base(f, frame_id=i) for i, f in enumerate(frames)]
    enh = [cpu.encode_enhancement(f, b) for f, b in zip(frames, layers, strict=True)] \
        if args.enhancement else []
    torch.set_num_threads(2)
    gpu = ScalableCodec.load(base, args.enhancement, "cuda")
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    print("| frame | ŷ identical (alone) | ŷ identical (batch) | machine max |Δ| | "
          "machine pixels differing | human max |Δ| |")
    print("|---|---|---|---|---|---|")
    ok = True
    for i, b in enumerate(layers):
        lay_c, lay_g = cpu.base.parse(b), gpu.base.parse(b)
        y_cpu = cpu.base.decode_latents([lay_c])
        y_gpu = gpu.base.decode_latents([lay_g]).cpu()
        same_shape = [gpu.base.parse(x) for x in layers
                      if cpu.base.parse(x).header.padded_width == lay_c.header.padded_width
                      and cpu.base.parse(x).header.padded_height == lay_c.header.padded_height]
        y_batch = gpu.base.decode_latents(same_shape)
        j = [x.header.frame_id for x in same_shape].index(lay_c.header.frame_id)
        alone, batch = torch.equal(y_cpu, y_gpu), torch.equal(y_cpu[0], y_batch[j].cpu())
        m_cpu, m_gpu = cpu.decode_machine(b), gpu.decode_machine(b)
        d = np.abs(m_cpu.astype(int) - m_gpu.astype(int))
        hd = "-"
        if enh:
            h_c, h_g = cpu.decode_human(b, enh[i]), gpu.decode_human(b, enh[i])
            hd = str(int(np.abs(h_c.astype(int) - h_g.astype(int)).max()))
        ok &= alone and batch
        print(f"| {i} | {alone} | {batch} | {int(d.max())} | {int((d > 0).sum())} | {hd} |")
    print("ŷ bit-exact on CUDA:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
