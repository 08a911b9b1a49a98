"""Bit-exact decoding across threads, processes and batch composition, with trained weights.

The edge encodes with 1 torch thread; a separate process decodes with 2 threads, each frame once
alone and once inside a batch with other frames. ŷ and the images must be identical bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from icm_codec import ScalableCodec
from icm_codec.api import _pad, frame_to_tensor
from icm_codec.bitstream import unpack_layer
from icm_codec.latent import L_MIN, SCALE_TABLE

DECODER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(2)
    from icm_codec import ScalableCodec
    from icm_codec.bitstream import unpack_layer
    args = json.loads(sys.argv[1])
    codec = ScalableCodec.load(args["base"], args["enh"])
    layers = [open(p, "rb").read() for p in args["layers"]]
    enh = [open(p, "rb").read() for p in args["enh_layers"]]
    # each frame alone, and all frames in one batch (different batch composition)
    alone = [codec.decode_machine(b) for b in layers]
    batch = codec.decode_machine_batch(layers[::-1])[::-1]
    ys = []
    for b in layers:
        lay = codec.base.parse(b)
        ys.append(codec.base.decode_latents([lay])[0])
    human = [codec.decode_human(b, e) for b, e in zip(layers, enh)]
    np.savez(args["out"], *alone, *batch, *human)
    torch.save(ys, args["out"] + ".y.pt")
    """
)


def test_cpu1_encode_cpu2_other_process_decode_is_bit_exact(trained_packages, photos,
                                                            tmp_path: Path) -> None:
    base, enh = trained_packages["base"], trained_packages["enhancement"]
    torch.set_num_threads(1)
    try:
        codec = ScalableCodec.load(base, enh)
        frames = [p[:192, :256] for p in photos[:3]]  # one padded size -> one batch
        layer_paths, enh_paths, y_enc, machine_enc, human_enc = [], [], [], [], []
        for i, f in enumerate(frames):
            b = codec.encode_base(f, frame_id=i)
            e = codec.encode_enhancement(f, b)
            x = frame_to_tensor(f)
            _, y_hat = codec.base.encode(_pad(x), tuple(x.shape[-2:]), frame_id=i)
            y_enc.append(y_hat[0])
            machine_enc.append(codec.decode_machine(b))
            human_enc.append(codec.decode_human(b, e))
            for data, paths, name in ((b, layer_paths, "b"), (e, enh_paths, "e")):
                p = tmp_path / f"{name}{i}.bin"
                p.write_bytes(data)
                paths.append(str(p))
        # the trained entropy model really uses the scale table (not only its lower bound)
        assert unpack_layer(Path(layer_paths[0]).read_bytes()).header.n_slices == 5
        spread = _scale_index_spread(codec, frames[0])
        assert spread >= 12, f"only {spread} scale indexes in use: weights not realistic"
    finally:
        torch.set_num_threads(2)

    out = str(tmp_path / "dec.npz")
    args = {"base": str(base), "enh": str(enh), "layers": layer_paths,
            "enh_layers": enh_paths, "out": out}
    subprocess.run([sys.executable, "-c", DECODER, json.dumps(args)], check=True,
                   timeout=600)
    res = np.load(out)
    arrays = [res[f"arr_{i}"] for i in range(len(res.files))]
    n = len(frames)
    alone, batch, human = arrays[:n], arrays[n : 2 * n], arrays[2 * n :]
    y_dec = torch.load(out + ".y.pt")
    for i in range(n):
        assert torch.equal(y_dec[i], y_enc[i]), f"frame {i}: decoded latent differs"
        np.testing.assert_array_equal(alone[i], machine_enc[i])
        np.testing.assert_array_equal(batch[i], machine_enc[i])
        np.testing.assert_array_equal(human[i], human_enc[i])


def _scale_index_spread(codec: ScalableCodec, frame: np.ndarray) -> int:
    """Distinct scale-table indexes the first slice uses for ``frame``."""
    model = codec.base.model
    x = _pad(frame_to_tensor(frame))
    with torch.no_grad():
        y = model.g_a(x)
        z = model.coder.h_a(y)
        med = model.coder._z_medians()
        z_hat = torch.floor(z - med + 0.5) + med
        feats = model.coder.h_s.forward_exact(z_hat)
        _, l_int = model.coder._slice_params(model.coder.context[0], feats, [])
        index = model.coder._index(l_int)
    assert int(index.max()) < len(SCALE_TABLE) and L_MIN < 0
    return int(torch.unique(index).numel())


def test_exact_path_ignores_thread_count_and_batch(trained_packages) -> None:
    """The integer networks give the same integers for any thread count and batch."""
    model = ScalableCodec.load(trained_packages["base"]).base.model
    coder = model.coder
    torch.manual_seed(1)
    z_hat = torch.randn(3, coder.entropy_bottleneck.channels, 5, 7) * 4
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(coder.h_s.forward_exact(z_hat))
        results.append(coder.h_s.forward_exact(z_hat[1:2]))
    torch.set_num_threads(2)
    assert torch.equal(results[0], results[2])
    assert torch.equal(results[0][1:2], results[1])
    assert torch.equal(results[1], results[3])
    assert torch.equal(results[0], torch.round(results[0]))  # integers


def test_banded_exact_conv_equals_whole(monkeypatch) -> None:
    """Large latents run the integer convolutions in row bands: same integers."""
    from icm_codec import intnet

    torch.manual_seed(3)
    x = torch.randint(-500, 500, (2, 16, 37, 23)).double()
    w = torch.randint(-127, 128, (8, 16, 3, 3)).double()
    whole = intnet._exact_conv(x, w, 1)
    monkeypatch.setattr(intnet, "_BAND_ELEMENTS", 16 * 9 * 23 * 2 * 5)  # 5-row bands
    banded = intnet._exact_conv(x, w, 1)
    assert torch.equal(whole, banded)
    assert torch.equal(whole, torch.nn.functional.conv2d(x, w, padding=1))


def test_unfold_path_used_off_cpu_matches() -> None:
    """The im2col + matmul path that GPUs take gives the same integers as conv2d."""
    from icm_codec import intnet

    torch.manual_seed(4)
    x = torch.randint(-4096, 4096, (2, 24, 11, 9)).double()
    for k in (1, 3):
        w = torch.randint(-127, 128, (5, 24, k, k)).double()
        for pad in ((k // 2, k // 2), (0, k // 2)):
            ref = intnet._conv_products(x, w, pad, unfold=False)
            assert torch.equal(intnet._conv_products(x, w, pad, unfold=True), ref)
