"""Fuzzing at scale (a script, not a CI test; tests/test_soak.py runs a short one): hostile
input through the cloud's decoder and through its EdgeLink service; prints a table.

1. Layers: mutated real base and enhancement layers (bit flips, truncation, extension, zeroed
   or random substreams) with the container's CRC recomputed, so the garbage reaches the rANS
   decoder and the networks; the same without a valid CRC; random bytes; mutated headers.
   Each goes through the cloud's own path (``CodecDecoder.check`` then ``decode``, or
   ``decode_human``). A layer must decode to an image of the header's size or be refused with
   ``RejectedLayerError``; anything else is a crash, anything over ``--hang-s`` a hang.
2. EdgeLink: streams of malformed messages (no Hello, bad Hellos, ids backwards, zero or huge,
   garbage layers, unasked-for enhancement responses, second Hellos, bytes that are no
   protobuf) against a live cloud process, while a well-behaved camera streams. Every stream
   must end with a status the service chose (not UNKNOWN or INTERNAL, which would be an
   unhandled exception), the cloud must stay up, and the good camera's frames must all be
   stored, once.

    python scripts/fuzz_services.py --layers 100000 --messages 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # soak.py, next to this one


# -- layers ------------------------------------------------------------------------------------
def _mutate(data: bytearray, rng: random.Random) -> bytearray:
    op = rng.choice(["flip", "truncate", "extend", "zero", "ones", "random", "splice"])
    s = bytearray(data)
    if op == "flip" and s:
        for _ in range(rng.randint(1, 8)):
            s[rng.randrange(len(s))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del s[rng.randrange(len(s) + 1):]
    elif op == "extend":
        s.extend(rng.randbytes(rng.randint(1, 64)))
    elif op == "zero":
        s = bytearray(len(s))
    elif op == "ones":
        s = bytearray(b"\xff" * len(s))
    elif op == "splice" and len(s) > 2:
        i, j = sorted(rng.randrange(len(s)) for _ in range(2))
        s[i:j] = rng.randbytes(rng.randint(0, 2 * (j - i) + 4))
    else:
        s = bytearray(rng.randbytes(rng.randint(0, 2 * len(s) + 8)))
    return s


def _forged(layer, rng: random.Random) -> bytes:
    """A layer with one substream mutated and a valid CRC."""
    from icm_codec.bitstream import pack_layer

    subs = [bytearray(s) for s in layer.substreams]
    k = rng.randrange(len(subs))
    subs[k] = _mutate(subs[k], rng)
    return pack_layer(dataclasses.replace(layer, substreams=tuple(bytes(s) for s in subs)))


def fuzz_layers(n: int, seed: int = 0, hang_s: float = 30.0) -> dict:
    """``n`` hostile layers through the cloud's decoder; returns outcome counts."""
    import torch

    from cloud_decoder.decoders import CodecDecoder, RejectedLayerError
    from icm_codec import ScalableCodec
    from icm_codec.bitstream import unpack_layer
    from icm_codec.registry import default_package

    torch.set_num_threads(1)
    codec = ScalableCodec.load(default_package("base"), default_package("enhancement"))
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    frames = [(nprng.random((h, w, 3)) * 255).astype(np.uint8)
              for h, w in ((48, 64), (64, 64), (72, 96))]
    bases = [codec.encode_base(f, frame_id=i) for i, f in enumerate(frames, 1)]
    enhs = [codec.encode_enhancement(f, b) for f, b in zip(frames, bases, strict=True)]
    parsed_b = [unpack_layer(b) for b in bases]
    parsed_e = [unpack_layer(e) for e in enhs]
    dec = CodecDecoder()
    counts: Counter[str] = Counter()
    crashes: list[str] = []
    slowest = 0.0
    current = {"t": time.monotonic(), "i": -1}
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(1.0):
            if time.monotonic() - current["t"] > hang_s:
                print(json.dumps({"hang": current["i"]}), flush=True)
                os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    for i in range(n):
        current["i"], current["t"] = i, time.monotonic()
        k = rng.randrange(len(bases))
        kind = rng.choices(["forged_base", "forged_enh", "crc", "random", "header"],
                           weights=[45, 20, 15, 10, 10])[0]
        if kind == "forged_base":
            data, base = _forged(parsed_b[k], rng), None
        elif kind == "forged_enh":
            data, base = _forged(parsed_e[k], rng), bases[k]
        elif kind == "crc":
            data, base = bytes(_mutate(bytearray(bases[k]), rng)), None
        elif kind == "random":
            data, base = rng.randbytes(rng.randint(0, 4096)), None
        else:  # the header region (model digest, sizes, table) mutated, CRC left as is
            raw = bytearray(bases[k])
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(min(len(raw), 96))] = rng.randrange(256)
            data, base = bytes(raw), None
        try:
            if base is None:
                parsed = dec.check(data)
                img = dec.decode([parsed])[0].image
                h = parsed.header
                ok = img.shape == (h.height, h.width, 3) and img.dtype == np.uint8
            else:
                img = dec.decode_human(base, data)
                ok = img.shape == frames[k].shape
            counts["decoded" if ok else "wrong_size"] += 1
        except RejectedLayerError:
            counts["rejected"] += 1
        except Exception as e:  # a crash: not a typed rejection
            counts["crash"] += 1
            if len(crashes) < 10:
                crashes.append(f"{kind}: {type(e).__name__}: {e}")
        slowest = max(slowest, time.monotonic() - current["t"])
    done.set()
    return {"layers": n, **{k: counts[k] for k in ("decoded", "rejected", "wrong_size",
                                                   "crash")},
            "seconds": round(time.monotonic() - t0, 1), "slowest_s": round(slowest, 3),
            "crash_examples": crashes}


# -- EdgeLink ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_streams(rng: random.Random, layer: bytes, n_messages: int):
    """Yields (name, [messages]) until about ``n_messages`` messages were produced; a message
    is an EdgeMessage or raw bytes."""
    from icm_rpc import pb

    def hello(cam: str) -> pb.EdgeMessage:
        return pb.EdgeMessage(hello=pb.Hello(camera_id=cam, epoch="fz"))

    def frame(fid: int, data: bytes) -> pb.EdgeMessage:
        return pb.EdgeMessage(frame=pb.BaseFrame(frame_id=fid, capture_time_us=1, layer=data))

    made = 0
    s = 0
    while made < n_messages:
        s += 1
        cam = f"fz-{s % 97}"
        kind = rng.choice(["no_hello", "bad_hello", "backwards", "id_range", "garbage_layers",
                           "unasked", "second_hello", "bytes", "bytes_later", "mixed"])
        msgs: list = []
        k = rng.randint(3, 15)
        if kind == "no_hello":
            msgs = [frame(i + 1, layer) for i in range(k)]
        elif kind == "bad_hello":
            cid = rng.choice(["", "x" * 200, "a\x00b", " pad", "\n", "ok"])
            msgs = [pb.EdgeMessage(hello=pb.Hello(camera_id=cid, epoch="e" * rng.choice(
                [1, 65]), base_model_id="m" * rng.choice([1, 300])))]
            msgs += [frame(i + 1, layer) for i in range(k - 1)]
        elif kind == "backwards":
            ids = sorted(rng.sample(range(1, 1000), k - 1), reverse=True)
            msgs = [hello(cam)] + [frame(i, layer) for i in ids]
        elif kind == "id_range":
            msgs = [hello(cam), frame(rng.choice([0, 1 << 49, (1 << 64) - 1]), layer)]
        elif kind == "garbage_layers":
            msgs = [hello(cam)] + [frame(i + 1, rng.randbytes(rng.randint(0, 300)))
                                   for i in range(k - 1)]
        elif kind == "unasked":
            msgs = [hello(cam)] + [pb.EdgeMessage(enhancement=pb.EnhancementResponse(
                request_id=rng.randint(1, 1 << 40), layer=rng.randbytes(64)))
                for _ in range(k - 1)]
        elif kind == "second_hello":
            msgs = [hello(cam), frame(1, layer), hello(cam)]
        elif kind == "bytes":
            msgs = [rng.randbytes(rng.randint(1, 200)) for _ in range(k)]
        elif kind == "bytes_later":
            msgs = [hello(cam).SerializeToString()] + [rng.randbytes(rng.randint(1, 200))
                                                       for _ in range(k - 1)]
        else:
            msgs = [hello(cam)]
            for i in range(k - 1):
                msgs.append(rng.choice([frame(i + 1, layer), frame(i + 1, b"junk"),
                                        pb.EdgeMessage(), pb.EdgeMessage(heartbeat=pb.Heartbeat(
                                            retained_from_frame_id=rng.randint(0, 1 << 62)))]))
        made += len(msgs)
        yield kind, msgs


def _send(port: int, msgs: list, timeout: float) -> tuple[str, int]:
    """Send a stream and close our side; returns the status it ended with and how many
    frames the cloud rejected on it (a valid stream of bad layers ends OK)."""
    import grpc

    from icm_rpc import pb

    raw = any(isinstance(m, bytes) for m in msgs)
    if raw:
        msgs = [m if isinstance(m, bytes) else m.SerializeToString() for m in msgs]
    rejected = 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.stream_stream(
            "/icm.v1.EdgeLink/Connect",
            request_serializer=(lambda b: b) if raw else pb.EdgeMessage.SerializeToString,
            response_deserializer=pb.CloudMessage.FromString)(iter(msgs), timeout=timeout)
        try:
            for msg in call:
                rejected += msg.WhichOneof("body") == "rejected"
            return "OK", rejected
        except grpc.RpcError as e:
            return e.code().name, rejected


def fuzz_edge_link(n_messages: int, seed: int = 0, stream_timeout_s: float = 20.0,
                   work: Path | None = None) -> dict:
    """Malformed streams against a cloud process while a good camera streams."""
    from edge_encoder.link import EdgeLink
    from edge_encoder.metrics import EdgeMetrics
    from edge_encoder.spool import Spool
    from icm_codec import ScalableCodec
    from icm_codec.registry import default_package

    rng = random.Random(seed)
    codec = ScalableCodec.load(default_package("base"))
    layer = codec.encode_base(np.zeros((64, 64, 3), np.uint8), frame_id=1)
    tmp = tempfile.TemporaryDirectory(prefix="icm-fuzz-", dir=work)
    folder = Path(tmp.name)
    port, db = _free_port(), folder / "cloud.sqlite3"
    log = (folder / "cloud.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "icm_app", "cloud", "--listen", f"127.0.0.1:{port}",
         "--db", str(db), "--decoder", "noop", "--detectors", "none", "--metrics-port", "-1",
         "--threads", "1", "--log-level", "error"], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    from soak import _rss_mb, _wait_serving

    spool = Spool(folder / "good.sqlite3", "good-cam")
    link = EdgeLink("good-cam", f"127.0.0.1:{port}", spool, None,  # type: ignore[arg-type]
                    EdgeMetrics())
    codes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    sent = rejected_frames = 0
    stop = threading.Event()
    try:
        _wait_serving(port, proc)
        link.start()
        rss0 = _rss_mb(proc.pid)

        def good() -> None:
            while not stop.is_set():
                fid = spool.next_frame_id()
                spool.add(fid, time.time_ns() // 1000, layer)
                link.notify()
                stop.wait(0.05)
        feeder = threading.Thread(target=good, daemon=True)
        feeder.start()
        t0 = time.monotonic()
        for kind, msgs in _bad_streams(rng, layer, n_messages):
            code, n_rejected = _send(port, msgs, stream_timeout_s)
            rejected_frames += n_rejected
            sent += len(msgs)
            codes[code] += 1
            by_kind.setdefault(kind, Counter())[code] += 1
        seconds = time.monotonic() - t0
        stop.set()
        feeder.join(5)
        deadline = time.monotonic() + 60
        while spool.pending_stats()[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        good_captured = spool.next_frame_id() - 1
        alive = proc.poll() is None
        rss1 = _rss_mb(proc.pid) if alive else float("nan")
    finally:
        stop.set()
        link.stop()
        spool.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    with sqlite3.connect(db) as conn:
        good_ids = [r[0] for r in conn.execute(
            "SELECT frame_id FROM frames WHERE camera_id = 'good-cam' ORDER BY frame_id")]
    tmp.cleanup()
    untyped = codes.get("UNKNOWN", 0) + codes.get("INTERNAL", 0)
    return {"messages": sent, "streams": sum(codes.values()), "codes": dict(codes),
            "frames_rejected": rejected_frames,
            "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())}, "untyped": untyped,
            "cloud_alive": alive, "seconds": round(seconds, 1),
            "good_frames": good_captured,
            "good_stored_once": good_ids == list(range(1, good_captured + 1)),
            "rss_start_mb": round(rss0), "rss_end_mb": round(rss1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=30.0)
    args = ap.parse_args()
    ok = True
    if args.messages:
        r = fuzz_edge_link(args.messages, args.seed)
        print(json.dumps(r), flush=True)
        print("\n| EdgeLink messages | streams | statuses | frames rejected | untyped | "
              "cloud up | good camera: frames, stored once | seconds |\n"
              "|---|---|---|---|---|---|---|---|")
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
        print(f"| {r['messages']} | {r['streams']} | {codes} | {r['frames_rejected']} | "
              f"{r['untyped']} | {r['cloud_alive']} | {r['good_frames']}, "
              f"{r['good_stored_once']} | {r['seconds']} |\n", flush=True)
        ok &= r["untyped"] == 0 and r["cloud_alive"] and r["good_stored_once"]
    if args.layers:
        r = fuzz_layers(args.layers, args.seed, args.hang_s)
        print(json.dumps(r), flush=True)
        print("\n| layers | decoded | rejected (typed) | wrong size | crashes | hangs | "
              "slowest s | seconds |\n|---|---|---|---|---|---|---|---|")
        print(f"| {r['layers']} | {r['decoded']} | {r['rejected']} | {r['wrong_size']} | "
              f"{r['crash']} | 0 | {r['slowest_s']} | {r['seconds']} |", flush=True)
        ok &= r["crash"] == 0 and r["wrong_size"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
