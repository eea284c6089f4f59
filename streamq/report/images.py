"""The report's sections about the images: sampled images before and after quantization,
and the per-image quality (PSNR and SSIM distributions, the worst images by PSNR)."""

from __future__ import annotations

import numpy as np

from streamq.report.context import Context, Result, Section
from streamq.report.html import (
    THUMB_SIDE,
    Raw,
    array_html,
    attr_name,
    esc,
    figure_html,
    fmt_psnr,
    fmt_ssim,
    new_figure,
    table_html,
)
from streamq.store.results import worst_images

__all__ = ["PREVIEW_SIDE", "before_after", "quality"]

PREVIEW_SIDE = 320  # longest side of an image in the before/after figures (pixels read)


def _psnr(r: Result) -> np.ndarray:
    """Per-image PSNR of a complete result (read with it by :func:`read_results`)."""
    assert r.psnr is not None, "a complete result has per-image PSNR"
    return r.psnr


def before_after(ctx: Context) -> Section | None:
    """Sampled images next to their quantized versions, one row per image, every K side by side."""
    if ctx.coll is None or not len(ctx.coll):
        return None
    ready = [r for r in ctx.results if r.ready]
    coll = ctx.coll
    body = (f"<p>{len(ctx.sample)} images, {esc(ctx.chosen_by)}: ids "
            f"{esc(', '.join(map(str, ctx.sample)))}.</p>")
    if not ready:
        body += ctx.note("No quantized images yet: fit a palette and run `streamq quantize STORE`; "
                         "originals only below.")
    figures = []
    for i in ctx.sample:
        panels = [(coll.labels[i] or f"#{i}", ctx.image(i, PREVIEW_SIDE))]
        for r in ready:
            panels.append((f"{r.title_of(i)}\nPSNR {fmt_psnr(float(_psnr(r)[i]))}",
                           ctx.quantized(r, i, PREVIEW_SIDE)))
        h, w = panels[0][1].shape[:2]
        cell, top = 2.6, 0.45  # inches per panel, inches for two title lines
        height = cell * h / max(h, w)
        # A fixed layout (no ticks, no layout engine): drawing is ~5x cheaper.
        fig = new_figure(cell * len(panels), height + top, layout=None)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=height / (height + top),
                            wspace=0.05)
        for n, (title, img) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), n + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if len(title) <= 60 else title[:59] + "…", fontsize=9,
                         parse_math=False)
        caption = " · ".join([f"#{i} {coll.labels[i]} ({coll.paths[i]}, {h}×{w} shown of "
                              f"{coll.heights[i]}×{coll.widths[i]})"]
                             + [f"{r.title_of(i)}: PSNR {fmt_psnr(float(_psnr(r)[i]))}"
                                for r in ready])
        psnrs = " ".join(f'data-psnr-{attr_name(r.key)}="{float(_psnr(r)[i])!r}"' for r in ready)
        tag = figure_html(fig, f"image {i} before and after quantization")
        width = tag.split('width="', 1)[1].split('"', 1)[0]
        figures.append(f'<figure class="pair" data-id="{i}" {psnrs} style="width:{width}px">'
                       f"{tag}<figcaption>{esc(caption)}</figcaption></figure>")
    body += f'<div class="pairs">{"".join(figures)}</div>'
    return Section("samples", "Before and after", body)


def _ssim_html(ctx: Context, ready: list[Result]) -> str:
    """The distribution of per-image SSIM of every result that has it, and its statistics."""
    have = [(r, r.ssim) for r in ready if r.ssim is not None]
    notes = "".join(ctx.note(f"No SSIM for {r.title}: it was quantized with --no-ssim; "
                             "`streamq quantize STORE` adds it.") for r in ready if r.ssim is None)
    if not have:
        return notes
    fig = new_figure(7, 3.4)
    ax = fig.add_subplot()
    finite = [ssim[np.isfinite(ssim)] for _, ssim in have]
    lo = min((float(f.min()) for f in finite if len(f)), default=0.0)
    bins = np.linspace(min(lo, 1 - 1e-6), 1.0, 31).tolist()
    for (r, _), f in zip(have, finite, strict=True):
        ax.hist(f, bins=bins, histtype="step", lw=1.5,
                label=f"{r.title} (median {np.median(f):.3f})" if len(f) else r.title)
    ax.set_xlabel("SSIM (luma, 11x11 Gaussian window, sigma 1.5)")
    ax.set_ylabel("images")
    ax.set_title("Per-image SSIM")
    ax.legend(loc="upper left", fontsize=8)
    body = figure_html(fig, "histogram of per-image SSIM", cls="fig ssim-hist")
    body += table_html(["result", "images", "min", "median", "mean", "max", "none (< 11x11)"], [
        [r.title, len(f), *(f"{fn(f):.4f}" if len(f) else "—"
                            for fn in (np.min, np.median, np.mean, np.max)),
         int(len(ssim) - len(f))] for (r, ssim), f in zip(have, finite, strict=True)], "ssim-stats")
    if ctx.coll is not None and ctx.coll.n_alpha:  # how an image with alpha is compared
        body += (f'<p class="ssim-alpha">For the {ctx.coll.n_alpha} images with alpha, SSIM is '
                 "the mean of the SSIM of the original and quantized images composited on "
                 "black and of the two composited on white.</p>")
    return body + notes


def quality(ctx: Context) -> Section | None:
    """Per-image PSNR and SSIM: their distributions for every result, and the worst images
    (by PSNR) with thumbnails."""
    if ctx.coll is None:
        return None
    ready = [r for r in ctx.results if r.ready]
    if not ready:
        return Section("quality", "Image quality (PSNR)", ctx.note(
            "No per-image PSNR yet: it is computed by `streamq quantize STORE`."))
    fig = new_figure(7, 3.4)
    ax = fig.add_subplot()
    finite = [_psnr(r)[np.isfinite(_psnr(r))] for r in ready]
    lo = min((float(f.min()) for f in finite if len(f)), default=0.0)
    hi = max((float(f.max()) for f in finite if len(f)), default=1.0)
    bins = np.linspace(lo, max(hi, lo + 1e-6), 31).tolist()
    for r, f in zip(ready, finite, strict=True):
        ax.hist(f, bins=bins, histtype="step", lw=1.5, label=f"{r.title} (median {np.median(f):.1f} dB)"
                if len(f) else r.title)
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    ax.set_title("Per-image PSNR")
    ax.legend(loc="upper left", fontsize=8)
    body = figure_html(fig, "histogram of per-image PSNR")
    body += table_html(["result", "images", "min", "median", "mean", "max", "exact (inf)"], [
        [r.title, len(_psnr(r)), *(f"{fn(f):.2f}" if len(f) else "—"
                                 for fn in (np.min, np.median, np.mean, np.max)),
         int(np.isinf(_psnr(r)).sum())] for r, f in zip(ready, finite, strict=True)], "psnr-stats")
    body += _ssim_html(ctx, ready)
    coll = ctx.coll
    for r in ready if ctx.cfg.worst else []:
        worst = worst_images(_psnr(r), ctx.cfg.worst)
        rows = []
        for rank, i in enumerate(worst, 1):
            thumbs = Raw(array_html(ctx.image(i, THUMB_SIDE), f"image {i}") + " "
                         + array_html(ctx.quantized(r, i, THUMB_SIDE), f"image {i}, {r.title}"))
            ssim = None if r.ssim is None else float(r.ssim[i])
            rows.append([rank, i, coll.labels[i], coll.paths[i],
                         Raw(f'<span class="psnr" data-psnr="{float(_psnr(r)[i])!r}">'
                             f"{esc(fmt_psnr(float(_psnr(r)[i])))}</span>"),
                         Raw(f'<span class="ssim" data-ssim="{"" if ssim is None else repr(ssim)}">'
                             f"{esc(fmt_ssim(ssim))}</span>"), thumbs])
        body += (f'<h3>Worst {len(worst)} images by PSNR, {esc(r.title)}</h3>'
                 f'<div class="worst" data-result="{esc(r.key)}">'
                 + table_html(["rank", "id", "label", "path", "PSNR", "SSIM",
                               "original · quantized"], rows)
                 + "</div>")
    return Section("quality", "Image quality (PSNR, SSIM)", body)
