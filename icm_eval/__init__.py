"""One evaluation package for ``icm eval-rd`` and ``icm eval-machine``.

- :mod:`~icm_eval.classical`: the classical codecs (JPEG / WebP / AVIF through Pillow, their
  settings and quality sweeps) — one table for both commands;
- :mod:`~icm_eval.learned`: model packages as codecs under test (a base layer, or a layer with
  the base it refines), the λ they were trained at;
- :mod:`~icm_eval.points`: :class:`RatePoint` (an operating point that turns images into real
  bytes and back) and :class:`RDPoint` (what it measured);
- :mod:`~icm_eval.data`: test images, sampled video frames, photo folders;
- :mod:`~icm_eval.metrics`: PSNR, MS-SSIM, BD-rate;
- :mod:`~icm_eval.rd`: ``icm eval-rd`` (R-D curves, BD-rates, ``rd.json`` / ``rd.md`` / plots).

``icm eval-machine`` (detector mAP on decoded images) stays with the detectors, in
:mod:`analytics.eval_machine`, and takes its rate points and images from here. This package
imports the codec library and nothing above it; its modules import numpy at most until used.
"""
