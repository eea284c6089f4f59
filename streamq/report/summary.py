"""The report's sections about the store and the run: the overview of every stage (what
is there, what is missing and the command that makes it), the collection (images, labels,
shapes, skipped inputs) and the run facts (timings, versions, configuration)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from streamq.describe import describe_source
from streamq.report.context import Context, Section
from streamq.report.groups import groups_command, groups_state
from streamq.report.html import esc, figure_html, fmt_psnr, fmt_seconds, new_figure, table_html
from streamq.results import result_state

__all__ = ["collection", "overview", "run_facts"]


def overview(ctx: Context) -> Section:
    """What the store holds at each stage, and what is missing."""
    st = ctx.store
    ingest, fit, per = st.section("ingest"), st.section("fit"), st.section("per_image")
    rows: list[list[Any]] = []
    state = ingest.get("state", "missing")
    rows.append(["ingest", state, f"{len(ctx.coll)} images, {ctx.coll.n_pixels:,} pixels"
                 if ctx.coll is not None else "run `streamq ingest SRC STORE` to finish it"])
    if fit:
        s = fit.get("summary", {})
        what = (f"K={s.get('k')} ({s.get('algorithm')}, {s.get('color_space')}), PSNR "
                f"{fmt_psnr(s['psnr'])}" if fit.get("state") == "complete" else
                "rerun `streamq fit` to finish it")
        if fit.get("state") == "complete" and fit.get("palette_source"):
            what += f", given: {describe_source(fit['palette_source'])}"
        rows.append(["shared palette", fit.get("state"), what])
    if per.get("state") == "complete":
        colors = ",".join(map(str, per.get("colors") or []))
        rows.append(["per-image palettes", "complete", f"K={colors} on "
                     f"{per.get('config', {}).get('sample')} of each image's pixels, method "
                     f"{per.get('config', {}).get('method', 'kmeans')}"])
    for r in ctx.results:
        what = ("mean PSNR " + fmt_psnr(float(np.mean(r.psnr[np.isfinite(r.psnr)])))
                if r.ready and r.psnr is not None and np.isfinite(r.psnr).any() else
                "" if r.ready else f"run `{r.command}`")
        rows.append([f"labels, {r.title}", r.state, what])
    if per and per.get("state") != "complete":
        rows.append(["per-image palettes", per.get("state"), "rerun `streamq fit --per-image`"])
    groups = groups_state(ctx)
    if groups:
        g_state = groups["state"]
        what = (f"{groups['groups']} groups ({groups['descriptor']}, K={groups['k']})"
                + (f", ARI {groups['ari']:.3f} / NMI {groups['nmi']:.3f} against the labels"
                   if groups["ari"] is not None else "") if g_state == "complete"
                else groups_command(ctx, g_state))
        rows.append(["image groups", g_state, what])
        if g_state != "complete":
            ctx.missing.append(f"image groups are {g_state}: {groups_command(ctx, g_state)}.")
    if state != "complete":
        ctx.missing.append(f"ingest is not finished (state: {state}): run `streamq ingest` again; "
                           "nothing else can be shown yet.")
    elif not fit and not per:
        ctx.missing.append("no palette yet: run `streamq fit STORE -k K` (one palette) or "
                           "`streamq fit STORE --per-image --colors 2,6,30` (one per image).")
    for what, sec in (("the shared fit", fit), ("the per-image fit", per)):
        if sec and sec.get("state") != "complete":
            ctx.missing.append(f"{what} is {sec.get('state')}: rerun the same `streamq fit` to finish it.")
    ctx.missing += [f"labels for {r.title} are {r.state}: run `{r.command}`."
                    for r in ctx.results if not r.ready]
    body = table_html(["stage", "state", ""], rows, "stages")
    body += "".join(ctx.note(m[0].upper() + m[1:]) for m in ctx.missing)
    return Section("overview", "Overview", body)


def collection(ctx: Context) -> Section | None:
    """Images, pixels, labels (bar chart), shapes, skipped inputs: from collection_info."""
    info = ctx.info
    if info is None:
        return None
    raw, stored = info["raw_bytes"], info["stored_bytes"]
    facts = [["images", f"{info['n_images']:,}"], ["pixels", f"{info['n_pixels']:,}"],
             ["stored", f"{stored / 2**20:.1f} MiB ({stored / raw:.0%} of raw)" if raw else "0"],
             ["labels", f"{info['n_labels']:,} ({info['labels_with_one_image']:,} with one image)"],
             ["distinct shapes", f"{info['n_shapes']:,}"], ["skipped inputs", f"{info['n_skipped']:,}"],
             ["source", info.get("source") or ""]]
    body = table_html(["", ""], facts, "facts")
    top = info["labels_top"]
    if top:
        fig = new_figure(7, 0.3 * len(top) + 1.0)
        ax = fig.add_subplot()
        names = [x["label"] or "(none)" for x in top][::-1]
        ax.barh(range(len(top)), [x["count"] for x in top][::-1], color="#4c72b0")
        ax.set_yticks(range(len(top)), [n if len(n) <= 40 else n[:39] + "…" for n in names])
        for t in ax.get_yticklabels():
            t.set_parse_math(False)
        ax.set_xlabel("images")
        ax.set_title(f"Images per label (top {len(top)} of {info['n_labels']:,})")
        body += figure_html(fig, "bar chart of images per label")
        tail = info["labels_tail"]
        body += table_html(["label", "images"], [[x["label"] or "(none)", x["count"]] for x in top]
                           + ([[f"… {tail['n_labels']:,} more labels", tail["n_images"]]]
                              if tail["n_labels"] else []), "labels")
    body += "<h3>Image shapes</h3>" + table_html(
        ["height × width", "images"], [[x["shape"].replace("x", " × "), x["count"]]
                                       for x in info["shapes_top"]], "shapes")
    if ctx.coll is not None and len(ctx.coll):
        hw, counts = np.unique(np.stack([ctx.coll.heights, ctx.coll.widths], 1), axis=0,
                               return_counts=True)
        fig = new_figure(4.5, 3.6)
        ax = fig.add_subplot()
        ax.scatter(hw[:, 1], hw[:, 0], s=12 + 120 * np.sqrt(counts / counts.max()), alpha=0.6)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.set_title("Image sizes (area ~ images)")
        body += figure_html(fig, "scatter plot of image widths and heights")
    limit = ctx.cfg.max_skipped
    skipped = info["skipped"]
    body += f"<h3>Skipped inputs ({len(skipped):,})</h3>"
    if skipped:
        body += table_html(["path", "reason"], [[s["path"], s["reason"]] for s in skipped[:limit]],
                           "skipped")
        if len(skipped) > limit:
            body += f'<p class="note">{len(skipped) - limit:,} more: see `streamq info --json`.</p>'
    else:
        body += "<p>None: every input was stored.</p>"
    return Section("collection", "Collection", body)


def run_facts(ctx: Context) -> Section:
    """Versions, configuration, seeds, timings per stage and the cluster each stage used."""
    from streamq.scheduler import library_versions

    st = ctx.store
    stages = [("ingest", "ingest"), ("fit", "shared fit"), ("quantize", "quantize"),
              ("per_image", "per-image fit")]
    per = st.section("per_image")
    stages += [(f"per_image_quantize_k{k}", f"per-image labels K={k}") for k in per.get("colors") or []]
    stages.append(("groups", "image groups"))
    rows, versions = [], {}
    for key, name in stages:
        sec = st.section(key)
        if not sec:
            continue
        t = sec.get("timings") or {}
        rt = sec.get("runtime") or {}
        total = (sec.get("summary", {}).get("seconds") if key == "fit" else None) or (
            sum(v for v in t.values() if isinstance(v, int | float)) if t else None)
        breakdown = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in t.items())
        cluster = rt.get("cluster", "not recorded")
        if "cluster" in cluster and rt.get("workers"):
            cluster += f", {rt['workers']} workers"
        state = result_state(st, key) if "state" in sec else ""  # labels, groups: stale?
        rows.append([name, state, sec.get("finished", ""), cluster,
                     fmt_seconds(total), breakdown or "not recorded"])
        if rt.get("versions"):
            versions[name] = rt["versions"]
    body = table_html(["stage", "state", "finished", "ran on", "time", "timings"], rows, "timings")
    body += ('<p class="note">Timings are those of the run that finished each stage (a resumed '
             "stage counts only its last run).</p>")
    versions["this report"] = library_versions()
    names = list(dict.fromkeys(n for v in versions.values() for n in v))
    body += "<h3>Versions</h3>" + table_html(
        ["library", *versions], [[n, *(v.get(n) or "—" for v in versions.values())] for n in names],
        "versions")
    meta = st.section("streamq")
    body += "<h3>Store</h3>" + table_html(["", ""], [
        ["path", st.path], ["format version", meta.get("format_version")],
        ["created with streamq", meta.get("created_with")]], "facts")
    configs = [("ingest settings", st.section("ingest").get("settings")),
               ("fit configuration", st.section("fit").get("config")),
               ("per-image configuration", per.get("config")),
               ("image groups configuration", st.section("groups").get("config"))]
    for title, conf in configs:
        if conf:
            seed = f" (seed {conf['seed']})" if "seed" in conf else ""
            body += f"<h3>{esc(title)}{esc(seed)}</h3>" + table_html(
                ["key", "value"], [[k, json.dumps(v)] for k, v in sorted(conf.items())], "config")
    return Section("run", "Run facts", body)
