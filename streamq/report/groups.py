"""The report's image groups section (``streamq cluster-images``): the members of each
group, its centre as a palette histogram, and the groups against the images' labels; and
the state of the groups and the command that completes them, which the overview shows too."""

from __future__ import annotations

from typing import Any

from streamq.report.context import Context, Section
from streamq.report.html import THUMB_SIDE, array_html, contingency_html, esc, palette_shares_html
from streamq.store.image_groups import groups_summary, load_groups

__all__ = ["groups_command", "groups_state", "image_groups"]


def groups_state(ctx: Context) -> dict[str, Any] | None:
    """The groups section of the store as ``streamq info`` shows it (None when there is none)."""
    return groups_summary(ctx.store)


def groups_command(ctx: Context, state: str) -> str:
    """What makes the image groups complete (for a note)."""
    shared = next((r for r in ctx.results if r.key == "shared"), None)
    if shared is None:
        return ("run `streamq fit STORE -k K` and `streamq quantize STORE`, then "
                "`streamq cluster-images STORE --groups G`")
    if not shared.ready:
        return "run `streamq quantize STORE`, then `streamq cluster-images STORE`"
    if state == "missing":
        return "run `streamq cluster-images STORE --groups G`"
    return "run `streamq cluster-images STORE`"


def image_groups(ctx: Context) -> Section | None:
    """Images grouped by their colours: members per group, centres, overlap with the labels."""
    if ctx.coll is None:
        return None
    title = "Image groups"
    state = (groups_state(ctx) or {}).get("state", "missing")
    if state != "complete":
        what = {"missing": "No image groups yet", "stale": "The image groups are stale (the "
                "palette was refitted)"}.get(state, f"The image groups are {state} (interrupted)")
        return Section("groups", title, ctx.note(f"{what}: {groups_command(ctx, state)}."))
    shared = next((r for r in ctx.results if r.key == "shared"), None)
    if shared is None or shared.shared_palette is None:  # a refit under way
        return Section("groups", title, ctx.note(
            f"The shared palette is not finished: {groups_command(ctx, 'stale')}."))
    res = load_groups(ctx.store.location)
    by = ("palette histograms" if res.descriptor == "histogram" else
          f"palette histograms and colour moments (weighted {res.moments_weight:g})")
    body = (f"<p>{len(res.group):,} images in {esc(res.groups)} groups by their {esc(by)} over "
            f"the shared palette (K={esc(res.k)}); {res.steps:,} mini-batch step{'s' if res.steps != 1 else ''}, stopped: "
            f"{esc(res.stop_reason)}. Each group: its centre as a palette histogram (colours by "
            f"share), then up to {ctx.cfg.group_samples} of its images, the nearest to the centre "
            "first.</p>")
    limit = ctx.cfg.max_groups
    blocks = []
    for g in range(min(res.groups, limit)):
        members = res.members(g)
        size = len(members)
        figs = "".join(
            f'<figure class="member" data-id="{int(i)}">'
            + array_html(ctx.image(int(i), THUMB_SIDE), f"image {int(i)}, group {g}")
            + f"<figcaption>#{int(i)} {esc(ctx.coll.labels[i])}</figcaption></figure>"
            for i in members[:ctx.cfg.group_samples])
        more = (f'<p class="note">{size - ctx.cfg.group_samples:,} more images.</p>'
                if size > ctx.cfg.group_samples else "")
        if not size:
            figs = '<p class="note">No image is nearest to this centre.</p>'
        blocks.append(f'<div class="group" data-group="{g}" data-size="{size}">'
                      f"<h3>Group {g} · {size:,} image{'s' if size != 1 else ''}</h3>"
                      + palette_shares_html(shared.shared_palette, res.centers[g, :res.k])
                      + f'<div class="members">{figs}</div>{more}</div>')
    body += f'<div class="groups">{"".join(blocks)}</div>'
    if res.groups > limit:
        body += (f'<p class="note">{res.groups - limit:,} more groups not shown '
                 f"(report.max_groups={limit}).</p>")
    body += "<h3>Groups and labels</h3>"
    if res.ari is None:
        body += ("<p>The images have no labels (folder names), so the groups cannot be compared "
                 "with them.</p>")
    elif len(res.label_names) == 1:
        body += (f"<p>Every image has the same label ({esc(res.label_names[0] or '(none)')}), "
                 "so the groups cannot be compared with labels.</p>")
    else:
        names = res.label_names
        body += (f'<p class="overlap">Adjusted Rand index <b class="ari" '
                 f'data-ari="{esc(repr(res.ari))}">{res.ari:.3f}</b>, normalised mutual '
                 f'information <b class="nmi" data-nmi="{esc(repr(res.nmi))}">{res.nmi:.3f}</b> '
                 'between the groups and the '
                 f"{len(names):,} image labels (1: the groups are the labels; an ARI near 0: "
                 "no closer than a random grouping). Images per group and label:</p>")
        body += contingency_html(res.contingency, names, ctx.cfg.group_labels)
    return Section("groups", title, body)
