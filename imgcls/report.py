"""report.html: one self-contained page per training run and per prediction, to read in a browser.

Plain HTML with the images inlined (base64 PNG) and the reliability diagram as inline SVG: no network, no
JavaScript framework (a dozen lines sort the per-class table), no new dependency. What it shows:
the settings, the curves (training runs), the per-class table (support, precision, recall, F1; head /
medium / tail by training images), the confusion matrix in class-size order, the most-confused pairs,
calibration (ECE and the reliability diagram, of the probabilities as predicted: after the decision tau
when the run has one), and for a prediction a gallery of the highest-loss images and of each tail class's
misses.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fsio import atomic_write
from .metrics import GROUPS, class_sizes, dense_confusion
from .plots import printable
from .run import AUDIT_PAGE, REPORT

GALLERY = 24          # the highest-loss images shown
TAIL_MISSES = 4       # misses shown per tail class
PAIRS = 15            # most-confused pairs listed

_SORT = """<script>
addEventListener('load', () => {  // for a quick look and for the browser test: did every inlined image decode?
  const imgs = [...document.images];
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length;
});
for (const th of document.querySelectorAll('table.sortable th')) th.onclick = () => {
  const table = th.closest('table'), body = table.tBodies[0], i = [...th.parentNode.children].indexOf(th);
  const key = r => { const v = r.children[i].dataset.v ?? r.children[i].textContent; return isNaN(v) ? v : +v; };
  const asc = th.dataset.asc = th.dataset.asc === '1' ? '0' : '1';
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : -1) * (asc === '1' ? 1 : -1)).forEach(r => body.append(r));
};
</script>"""

# The page may load nothing from anywhere: only its inlined images, style and script. A browser enforces it.
_CSP = ("<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">")

_STYLE = """<style>
body{font:14px system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f0f0f0;cursor:pointer}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:120px;font-size:11px}
.gallery img{width:120px;image-rendering:pixelated;border:1px solid #ccc}
</style>"""


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _thumb(pixels: torch.Tensor) -> str:
    """A 3 x H x W uint8 image as an inline PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(buffer, format="PNG")
    return _png(buffer.getvalue())


def _e(text) -> str:
    return html.escape(printable(str(text)))


def group_of(count: int) -> str:
    for name, low, high in GROUPS:
        if count >= low and (high is None or count < high):
            return name
    return ""


def per_class_rows(metrics: dict, class_names, train_counts) -> str:
    rows = []
    for i, name in enumerate(class_names):
        row = metrics["per_class"][name]
        n_train = int(train_counts[i]) if train_counts is not None else None
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{row['support']}</td>"
            + (f"<td>{n_train}</td><td>{group_of(n_train)}</td>" if n_train is not None else "")
            + "".join(f"<td data-v='{row[k]:.6f}'>{row[k]:.3f}</td>" for k in ("precision", "recall", "f1"))
            + "</tr>")
    head = "<tr><th>class</th><th>support</th>" + ("<th>train images</th><th>group</th>"
                                                    if train_counts is not None else "")
    head += "<th>precision</th><th>recall</th><th>F1</th></tr>"
    return f"<table class='sortable' id='per-class'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def confused_pairs(confusion, class_names, top: int = PAIRS) -> list[tuple[str, str, int, float]]:
    """(true, predicted, count, share of the true class) of the largest off-diagonal cells."""
    sizes = class_sizes(confusion)
    if isinstance(confusion, dict):
        cells = [(t, p, n) for t, p, n in confusion["cells"] if t != p]
    else:
        dense = dense_confusion(confusion)
        cells = [(t, p, int(dense[t, p])) for t, p in zip(*np.nonzero(dense)) if t != p]
    cells.sort(key=lambda c: -c[2])
    return [(class_names[t], class_names[p], n, n / max(1, sizes[t])) for t, p, n in cells[:top]]


def reliability_svg(bins: list[dict], size: int = 260) -> str:
    """Accuracy against confidence per bin (bars) with the diagonal of perfect calibration."""
    pad, inner = 30, size - 40
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' id='reliability'>",
             f"<rect x='{pad}' y='10' width='{inner}' height='{inner}' fill='none' stroke='#999'/>",
             f"<line x1='{pad}' y1='{10 + inner}' x2='{pad + inner}' y2='10' stroke='#c33' stroke-dasharray='4'/>"]
    for b in bins:
        x, w = pad + b["low"] * inner, (b["high"] - b["low"]) * inner
        h = b["accuracy"] * inner
        parts.append(f"<rect x='{x:.1f}' y='{10 + inner - h:.1f}' width='{w:.1f}' height='{h:.1f}' "
                     f"fill='#4a7ebb' opacity='0.8'><title>confidence {b['confidence']:.3f}, accuracy "
                     f"{b['accuracy']:.3f}, {b['count']} images</title></rect>")
    parts.append(f"<text x='{pad}' y='{size - 4}' font-size='11'>confidence (0 to 1); bars: accuracy</text></svg>")
    return "".join(parts)


def gallery(items) -> str:
    """items: (thumbnail data URI, caption) pairs."""
    figures = "".join(f"<figure><img src='{src}' alt='{_e(cap)}'><figcaption>{_e(cap)}</figcaption></figure>"
                      for src, cap in items)
    return f"<div class='gallery'>{figures}</div>"


def misses(images: torch.Tensor, probs: np.ndarray, labels: np.ndarray, class_names, train_counts,
           sources) -> str:
    """The gallery part: the highest-loss images, then up to TAIL_MISSES misses of each tail class."""
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    pred = probs.argmax(1)

    def caption(i):
        return (f"{sources[i]}: true {class_names[labels[i]]}, predicted {class_names[pred[i]]} "
                f"({probs[i, pred[i]]:.2f})")

    top = np.argsort(-loss, kind="stable")[:GALLERY]
    out = ["<h3>Highest loss</h3>", gallery((_thumb(images[i]), caption(i)) for i in top)]
    if train_counts is not None:
        for c, name in enumerate(class_names):
            if group_of(int(train_counts[c])) != "tail":
                continue
            wrong = np.flatnonzero((labels == c) & (pred != c))[:TAIL_MISSES]
            if len(wrong):
                out += [f"<h3>Tail class {_e(name)}: {int(((labels == c) & (pred != c)).sum())} of "
                        f"{int((labels == c).sum())} missed</h3>", gallery((_thumb(images[i]), caption(i)) for i in wrong)]
    return "".join(out)


def write_report(folder: str | Path, *, title: str, metrics: dict, class_names, settings: dict | None = None,
                 train_counts=None, pngs: dict | None = None, gallery_html: str = "") -> Path:
    """folder/report.html from a metrics dict (metrics.classification_metrics, with "calibration" when
    known), the PNGs to inline ({caption: path}) and an optional gallery."""
    folder = Path(folder)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{_CSP}<title>{_e(title)}</title>{_STYLE}</head><body>",
             f"<h1>{_e(title)}</h1>",
             "<p>" + ", ".join(f"{k.replace('_', ' ')} <b>{metrics[k]:.4f}</b>" for k in
                               ("accuracy", "macro_f1", "balanced_accuracy", "weighted_f1") if k in metrics)
             + f" on {metrics.get('num_samples', '?')} images ({_e(metrics.get('split', ''))})</p>"]
    calib = metrics.get("calibration")
    if calib:
        parts += [f"<h2>Calibration</h2><p>Expected calibration error <b id='ece'>{calib['ece']:.4f}</b> "
                  f"({calib['num_bins']} bins) of {_e(calib.get('of', 'the probabilities'))}.</p>",
                  reliability_svg(calib["bins"])]
    parts += ["<h2>Per class</h2><p>Click a column to sort.</p>",
              per_class_rows(metrics, class_names, train_counts)]
    pairs = confused_pairs(metrics["confusion_matrix"], class_names)
    if pairs:
        parts.append("<h2>Most confused</h2><table><tr><th>true</th><th>predicted as</th><th>images</th>"
                     "<th>share of the class</th></tr>" + "".join(
                         f"<tr><td>{_e(t)}</td><td>{_e(p)}</td><td>{n}</td><td>{share:.1%}</td></tr>"
                         for t, p, n, share in pairs) + "</table>")
    for caption, path in (pngs or {}).items():
        if Path(path).is_file():
            parts.append(f"<h2>{_e(caption)}</h2><img alt='{_e(caption)}' style='max-width:100%' "
                         f"src='{_png(Path(path).read_bytes())}'>")
    if gallery_html:
        parts += ["<h2>Misclassified images</h2>", gallery_html]
    if settings:
        parts.append("<h2>Settings</h2><pre>" + _e(json.dumps(settings, indent=1)) + "</pre>")
    parts.append(_SORT + "</body></html>")
    path = folder / REPORT
    atomic_write(path, "".join(parts))
    return path


AUDIT_SHOWN = 48  # label issues, duplicate groups and outliers shown in audit.html (all are in the CSVs)


def write_audit_page(folder: str | Path, *, title: str, summary: dict, images: torch.Tensor, issues: list[dict],
                     groups: list[dict], outliers: list[tuple[int, float]], paths, labels, parts,
                     strays: list[dict] = ()) -> Path:
    """folder/audit.html: the audit's counts and galleries (the first AUDIT_SHOWN of each finding)."""
    dup = summary["duplicate_groups"]
    parts_html = [f"<!doctype html><html><head><meta charset='utf-8'>{_CSP}<title>{_e(title)}</title>{_STYLE}"
                  "<style>.group{border:1px solid #ccc;margin:6px 0;padding:4px}.leak{border-color:#c00}</style>"
                  "</head><body>", f"<h1>{_e(title)}</h1>",
                  f"<p>{summary['images']} images. <b id='issues'>{summary['label_issues']}</b> label issue(s) by "
                  f"confident learning on {_e(summary['out_of_fold'])}; <b id='exclude'>{summary['to_exclude']}</b> "
                  f"images in exclude.csv, <b id='strays'>{summary['strays']}</b> of them strays "
                  f"({_e(summary['to_exclude_rule'])}), <b id='relabel'>"
                  f"{summary['to_relabel']}</b> of those in relabel.csv ({_e(summary['to_relabel_rule'])}). "
                  f"<b id='groups'>{dup['exact']}</b> "
                  f"exact and <b>{dup['near']}</b> near-duplicate group(s) (cosine >= {summary['threshold']}), "
                  f"<b id='leaks'>{summary['groups_crossing_test']}</b> of them across the test split "
                  f"({summary['test_images_in_crossing_groups']} test images). The CSVs beside this page list "
                  "everything.</p>"]
    parts_html += ["<h2>Label issues (most likely first)</h2>", gallery(
        (_thumb(images[r["position"]]), f"#{r['rank']} {r['path']}: given {r['given']}, suggested "
         f"{r['suggested']} (p {r['p_suggested']:.2f}; p given {r['score']:.2f}; look-alikes under each "
         f"{r['neighbours_given']} / {r['neighbours_suggested']})") for r in issues[:AUDIT_SHOWN])]
    if strays:
        parts_html += ["<h2>Strays (not label issues; their look-alikes carry another label)</h2>", gallery(
            (_thumb(images[r["position"]]), f"{r['path']}: given {r['given']}, look-alikes {r['suggested']} "
             f"(under each {r['neighbours_given']} / {r['neighbours_suggested']}; p given {r['score']:.2f})")
            for r in strays[:AUDIT_SHOWN])]
    parts_html.append("<h2>Duplicate groups (those across the test split first)</h2>")
    for g, d in sorted(enumerate(groups, 1), key=lambda x: not x[1]["crosses_test"])[:AUDIT_SHOWN]:
        caption = f"group {g}: {d['kind']}" + (", across the test split" if d["crosses_test"] else "")
        parts_html.append(f"<div class='group{' leak' if d['crosses_test'] else ''}'><b>{_e(caption)}</b>" + gallery(
            (_thumb(images[m]), f"{paths[m]} ({parts[m]}, {labels[m]}, cos {s:.3f})")
            for m, s in zip(d["members"], d["similarity"])) + "</div>")
    parts_html += ["<h2>Outliers (farthest from every class)</h2>", gallery(
        (_thumb(images[i]), f"{paths[i]} ({labels[i]}, {parts[i]}): {score:.3f}") for i, score in
        outliers[:AUDIT_SHOWN])]
    parts_html.append(_SORT + "</body></html>")
    path = Path(folder) / AUDIT_PAGE
    atomic_write(path, "".join(parts_html))
    return path
