"""The report's sections about the fit: the palettes (the shared one by pixel count, a
sample of per-image ones), a per-image quality fit's chosen K and the shared fit's
convergence curves."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamq.describe import describe_source
from streamq.report.context import Context, Result, Section
from streamq.report.html import (
    Raw,
    esc,
    figure_html,
    fmt_psnr,
    new_figure,
    swatches_html,
    table_html,
)
from streamq.store.names import FIT_HISTORY, HISTORY_KEYS, PER_IMAGE_QUALITY

__all__ = ["CHOSEN_K_ROWS", "PER_IMAGE_PALETTES", "chosen_k", "convergence", "palette"]

PER_IMAGE_PALETTES = 4  # sampled images whose per-image palettes are shown
_ALPHA_NOTE = ('<p class="alpha-note">Palettes with alpha: each colour is drawn over a '
               "checkerboard, its code <code>#rrggbbaa</code> (the straight colour, then its "
               "alpha).</p>")
CHOSEN_K_ROWS = 500  # images listed with their chosen K (and below MIN) by a quality fit


def palette(ctx: Context) -> Section | None:
    """The shared palette as swatches by pixel count; a sample of per-image palettes."""
    if ctx.coll is None:
        return None
    body = ""
    fit = ctx.info.get("fit") if ctx.info else None
    if fit and fit.get("state") == "complete":
        hexes = fit["palette_hex"]
        rgb = _hex_rgb(hexes)
        body += (f"<h3>Shared palette: {len(hexes)} colours</h3><p>Sorted by pixel count "
                 "(every pixel of the collection, counted on its colour histogram).</p>")
        if fit.get("palette_source"):
            body += (f'<p class="palette-source">Given, not fitted: '
                     f"{esc(describe_source(fit['palette_source']))}.</p>")
        alpha = ctx.shared_alpha
        if alpha is not None:
            body += _ALPHA_NOTE
        body += swatches_html(rgb, np.asarray(fit["counts"]), ctx.cfg.max_colors, alpha)
        if fit.get("fixed_colors"):
            body += _fixed_html(fit["fixed_colors"])
    elif fit:
        body += ctx.note(f"The shared palette is {fit.get('state')}: rerun `streamq fit`.")
    per = [r for r in ctx.results if r.palettes is not None]
    if per:
        shown = ctx.sample[:PER_IMAGE_PALETTES]
        body += (f"<h3>Per-image palettes of {len(shown)} sampled images</h3>"
                 "<p>Each image's own palette per K, sorted by its pixel count in that image "
                 "(palette order where its labels are missing).</p>")
        if any(ctx.coll.has_alpha[i] for i in shown):
            body += _ALPHA_NOTE
        fixed = (ctx.info.get("per_image") or {}).get("fixed_colors") if ctx.info else None
        if fixed:
            body += _fixed_html(fixed)
        for i in shown:
            rows = "".join(
                f'<div class="pi-k"{_own_k_attr(r, i)}><span>{esc(_k_label(r, i))}</span>'
                + swatches_html(ctx.palette(r, i), ctx.label_counts(r, i) if r.ready else None,
                                ctx.cfg.max_colors, ctx.palette_alpha(r, i)) + "</div>"
                for r in per)
            body += (f'<div class="per-image-palette" data-id="{i}"><h4>#{i} '
                     f"{esc(ctx.coll.labels[i])} <small>{esc(ctx.coll.paths[i])}</small></h4>"
                     f"{rows}</div>")
    if not body:
        return Section("palette", "Palette", ctx.note(
            "No palette fitted: run `streamq fit STORE -k K` or `streamq fit STORE --per-image`."))
    return Section("palette", "Palette", body)


def _k_label(r: Result, i: int) -> str:
    return f"K={r.k}" if r.quality is None else f"K={r.own_k(i)} (quality, of {r.k})"


def _own_k_attr(r: Result, i: int) -> str:
    """``data-k`` of a quality fit's palette row (other pages stay byte for byte as before)."""
    return "" if r.quality is None else f' data-k="{r.own_k(i)}"'


def chosen_k(ctx: Context) -> Section | None:
    """A per-image quality fit's choice (``fit --per-image --quality``): the target, how many
    images took each K, the images below MIN and why, and every image's K and PSNR (the first
    :data:`CHOSEN_K_ROWS`). None without such a fit."""
    r = next((r for r in ctx.results if r.quality is not None), None)
    if ctx.coll is None or r is None or r.quality is None:
        return None
    q, coll, n = r.quality, ctx.coll, len(r.quality["k"])
    target = ctx.store.section("per_image").get("quality") or {}
    lo, hi = target.get("k_range", ["?", r.k])
    below = [i for i in range(n) if q["reason"][i]]
    # mean K and the counts as the fit recorded them (streamq.per_image._write_quality)
    body = (f"<p>Each image has the smallest K in {esc(lo)}..{esc(hi)} whose own palette "
            f"reaches {esc(target.get('max'))} dB PSNR over its pixels (MIN "
            f"{esc(target.get('min'))} dB): mean K {float(target.get('mean_k', 0.0)):.1f}, "
            f"{esc(target.get('met'))} of {n} images reached MAX, "
            f"{esc(target.get('below_min'))} below MIN. "
            f"Palettes are stored padded to K={esc(r.k)}; only each image's own K entries are "
            "shown.</p>")
    ks, counts = np.unique(np.asarray(q["k"], np.int64), return_counts=True)
    body += "<h3>Images per chosen K</h3>" + table_html(
        ["K", "images"], [[int(k), int(c)] for k, c in zip(ks, counts, strict=True)], "k-counts")

    def row(i: int) -> list[Any]:
        return [i, coll.labels[i], coll.paths[i],
                Raw(f'<span class="k" data-k="{int(q["k"][i])}">{int(q["k"][i])}</span>'),
                Raw(f'<span class="psnr" data-psnr="{float(q["psnr"][i])!r}">'
                    f"{esc(fmt_psnr(float(q['psnr'][i])))}</span>")]

    if below:
        body += (f"<h3>Below MIN: {len(below)} images</h3>"
                 + table_html(["id", "label", "path", "K", "PSNR", "why"],
                              [row(i) + [q["reason"][i]] for i in below[:CHOSEN_K_ROWS]],
                              "below-min"))
    shown = min(n, CHOSEN_K_ROWS)
    body += (f"<h3>Every image's K and PSNR{f' (the first {shown} of {n})' if shown < n else ''}"
             "</h3>" + table_html(["id", "label", "path", "K", "PSNR", "reached MAX"],
                                  [row(i) + ["yes" if q["met"][i] else "no"]
                                   for i in range(shown)], "chosen-k"))
    if shown < n:
        body += (f"<p>The store's table {esc(PER_IMAGE_QUALITY)} (and `streamq export STORE "
                 "OUT.zarr --zarr`) has every image.</p>")
    return Section("per-image-quality", "Per-image quality target", body)


def _fixed_html(record: dict[str, Any]) -> str:
    """The fixed colours of a fit (:meth:`streamq.fixed.FixedColors.record`): where they came
    from and their swatches in palette order (the shared palette above shows their counts)."""
    n = int(record["n"])
    return (f'<div class="fixed-colors"><h4>Fixed colours: {n}, kept exactly as entries '
            f"{esc(record['positions'])}</h4><p>From {esc(describe_source(record['source']))}; "
            "the fit moved only the other entries.</p>"
            + swatches_html(_hex_rgb(record["colors"]), None, n) + "</div>")


def _hex_rgb(hexes: list[str]) -> np.ndarray:
    """``(K, 3)`` uint8 colours of ``#rrggbb`` strings (as the store records palettes)."""
    return np.asarray([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hexes], dtype=np.uint8)


def convergence(ctx: Context) -> Section | None:
    """The shared fit's history: centre shift and batch inertia (mini-batch) or MSE (Lloyd)."""
    if ctx.coll is None:
        return None
    fit = ctx.store.section("fit")
    if fit.get("state") != "complete":
        if ctx.store.section("per_image"):
            return Section("convergence", "Convergence", "<p>Per-image palettes are k-means fits "
                           "of single images: there is no collection-wide convergence curve.</p>")
        return Section("convergence", "Convergence", ctx.note(
            "No finished shared fit, so no convergence curve: run `streamq fit STORE`."))
    s = fit["summary"]
    if fit.get("palette_source"):
        return Section("convergence", "Convergence", "<p>The shared palette was given (" +
                       esc(describe_source(fit["palette_source"])) + "), not fitted: there is "
                       "no convergence curve.</p>")
    h = ctx.store.read_table(FIT_HISTORY, HISTORY_KEYS)
    lloyd = s["algorithm"] == "lloyd"
    tol = fit.get("config", {}).get("tol")
    fig = new_figure(9, 3.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = h["step"] if lloyd else h["pixels_seen"]
    xlabel = "Lloyd iteration" if lloyd else "pixels seen"
    shift = np.maximum(h["shift"].astype(float), 1e-12)
    ax1.plot(x, shift, lw=1)
    ax1.set_yscale("log")
    if tol:
        ax1.axhline(tol, color="#c44e52", ls="--", lw=1, label=f"tol = {tol:g}")
        ax1.legend(loc="upper right")
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel("largest centre shift")
    ax1.set_title("Centre shift")
    rgb = s.get("color_space") == "rgb"
    inertia = h["inertia"].astype(float) * (255.0 ** 2 / 3 if rgb else 1.0)
    ax2.plot(x, inertia, lw=1, color="#55a868", alpha=0.5 if not lloyd and len(x) > 20 else 1)
    if not lloyd and len(x) > 20:  # batch values are noisy: add a running mean
        w = max(5, len(x) // 20)
        mean = np.convolve(inertia, np.ones(w) / w, mode="valid")
        ax2.plot(x[w - 1:], mean, lw=1.5, color="#2d6a3e", label=f"mean of {w} batches")
        ax2.legend(loc="upper right")
    ax2.set_xlabel(xlabel)
    if lloyd:
        ax2.set_ylabel("MSE (uint8 RGB units)" if rgb else "mean squared OKLab distance")
        ax2.set_title("MSE per iteration (every pixel)")
    else:
        ax2.set_ylabel("MSE (uint8 RGB units)" if rgb else "mean squared OKLab distance")
        ax2.set_title("Batch inertia (before each update)")
    body = figure_html(fig, "convergence curves of the fit")
    body += table_html(["", ""], [
        ["algorithm", f"{s['algorithm']} in {s['color_space']}"], ["K", s["k"]],
        ["steps" if not lloyd else "iterations", f"{s['steps']:,}"],
        ["pixels seen", f"{s['pixels_seen']:,}"], ["stopped", s["stop_reason"]],
        ["MSE / PSNR", f"{s['mse']:.2f} / {fmt_psnr(s['psnr'])} (every pixel)"],
        ["history points", f"{len(x):,}"]], "facts")
    return Section("convergence", "Convergence", body)
