"""The ``icm`` menu: each subcommand's name, the module that implements it, its one-line help.

This table is all ``icm --help`` reads; a command's module is imported only when it runs. Each
module exposes ``COMMANDS`` (an :class:`icm_codec.commands.CommandTable`) holding the same
names; ``tests/test_layering.py`` checks that the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MENU", "MenuEntry", "entry"]


class MenuEntry(NamedTuple):
    name: str
    module: str
    extra: str  # the install extra whose packages the command needs: pip install '.[EXTRA]'
    help: str


MENU: tuple[MenuEntry, ...] = (
    MenuEntry("encode", "icm_codec.cli", "codec",
              "encode an image into base (and enhancement) layers"),
    MenuEntry("decode", "icm_codec.cli", "codec",
              "decode an .icm file into machine and/or human images"),
    MenuEntry("info", "icm_codec.cli", "codec",
              "print the header fields, sizes and bits per pixel of an .icm file"),
    MenuEntry("model", "icm_codec.cli", "codec", "create or list model packages"),
    MenuEntry("train", "icm_codec.cli", "train",
              "train a codec (resumes from the run directory's last checkpoint)"),
    MenuEntry("plan", "icm_codec.cli", "train",
              "run the declarative training plan behind the shipped packages"),
    MenuEntry("eval-rd", "icm_eval.cli", "eval",
              "rate-distortion evaluation against JPEG, WebP and AVIF"),
    MenuEntry("masks", "icm_codec.cli", "train",
              "render example training masks (image | mask per alpha)"),
    MenuEntry("eval-machine", "analytics.cli", "cloud",
              "machine-vision benchmark: mAP vs bpp of base layer, human layer, JPEG, WebP, "
              "AVIF"),
    MenuEntry("adapt-detector", "analytics.cli", "cloud",
              "fine-tune a YOLO detector on machine images of real base layers (resumable); the "
              "cloud serves it for frames of those bases"),
    MenuEntry("edge", "edge_encoder.cli", "edge",
              "run an edge encoder: capture, encode, stream base layers to the cloud"),
    MenuEntry("cloud", "cloud_decoder.cli", "cloud",
              "run the cloud decoder: ingest base layers, analytics, analyst API"),
    MenuEntry("analyst", "cloud_decoder.cli", "analyst",
              "query the cloud: cameras, frames, detections, human views"),
    MenuEntry("certs", "icm_rpc.cli", "analyst",
              "make TLS material: a CA, cloud and edge certificates"),
    MenuEntry("demo", "icm_app.demo", "edge,cloud",
              "cloud + edge on this machine: stream a video, detect, fetch a human view"),
    MenuEntry("console", "console.cli", "console",
              "run the analyst web console (cameras, frames, human views, live)"),
)

_BY_NAME = {e.name: e for e in MENU}


def entry(name: str) -> MenuEntry | None:
    """The menu entry called ``name``, or None."""
    return _BY_NAME.get(name)
